"""``dsseg explore [OUTPUT_DIR]``: the explorer, a local web app (Gradio: ``pip install -e '.[explore]'``).

    dsseg explore                       one image: upload or pick it, re-segment from cached attention
    dsseg explore OUTPUT_DIR            also browse a segment job's (or an evaluation's) output

The Image tab runs one forward per image and method extraction; every control then re-segments from
the cached attention. The Job output tab pages through a job's rows, sorted and filtered by per-image
score, error reason or segment count, and shows each segment's mask, area, bbox, name and score.
Binds to 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dsseg.commands.common import (
    CAPTIONER_HELP,
    CommandParser,
    add_model_arguments,
    fail,
    parse_param_values,
    plain,
    positive_int,
)
from dsseg.errors import ConfigError
from dsseg.io.sources import IMAGE_EXTENSIONS, is_uri
from dsseg.model.config import ExtractConfig

DEFAULT_CAPACITY = 4  # forwards kept (dsseg.explore.session.DEFAULT_CAPACITY; not imported: --help stays light)


def build_parser() -> CommandParser:
    parser = CommandParser(prog="dsseg explore", description=plain(__doc__).split("\n\n")[0])
    parser.add_argument(
        "output", nargs="?", help="a segment job's --output folder, or an evaluation's (its run/ and per_image.parquet)"
    )
    parser.add_argument("--scores", help="per-image scores (an evaluation's per_image.parquet) when not beside OUTPUT")
    parser.add_argument("--images", help="a folder of images to pick from in the Image tab (uploads always work)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--cache-images",
        type=positive_int,
        default=DEFAULT_CAPACITY,
        help=f"forwards kept in memory (default {DEFAULT_CAPACITY})",
    )
    parser.add_argument("--captioner", help=CAPTIONER_HELP + "; enables naming by caption")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extraction parameter every view takes (repeatable), e.g. image_size=256 for quicker forwards "
        "on a CPU, noise=noise or timestep=100; the controls set the method's own",
    )
    add_model_arguments(parser, backbone_default="tiny", note=": random weights, for trying the app")
    return parser


def run(args: argparse.Namespace) -> int:
    params = parse_param_values(args.param)
    ExtractConfig.from_params(params)  # extraction parameters only: the controls set the method's
    if args.scores and not args.output:
        raise ConfigError("scores", "goes with an OUTPUT folder (dsseg explore OUTPUT --scores per_image.parquet)")
    images = []
    if args.images:
        if not Path(args.images).is_dir():
            raise ConfigError("images", f"{args.images!r} is not a folder")
        images = image_files(args.images)
    from dsseg.explore.outputs import OutputBrowser

    browser = None
    if args.output:
        if not is_uri(args.output) and not Path(args.output).exists():
            raise ConfigError("output", f"{args.output}: no such folder")
        browser = OutputBrowser(args.output, args.scores)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing is sent anywhere
    try:
        from dsseg.explore.app import build_app, launch
    except ImportError as error:
        if error.name is None or not error.name.startswith("gradio"):
            raise
        return fail("dsseg explore", "needs Gradio: pip install -e '.[explore]'")
    from dsseg.explore.session import ImageExplorer

    explorer = ImageExplorer(
        args.backbone,
        device=None if args.device == "auto" else args.device,
        dtype=None if args.dtype == "auto" else args.dtype,
        offline=args.offline,
        captioner=args.captioner,
        capacity=args.cache_images,
        compile=args.compile,
        params=params,
    )
    explorer.backbone()  # now, so that a missing model is said before the app starts
    app = build_app(explorer, browser, images)
    print(f"dsseg explore on http://{args.host}:{args.port} (Ctrl-C stops)", file=sys.stderr)
    try:
        launch(app, args.host, args.port, block=True)
    except OSError as error:  # the port is taken, or the address cannot be bound
        raise ConfigError("port", f"cannot serve on {args.host}:{args.port}: {error}; choose another port") from None
    return 0


def image_files(folder: str, limit: int = 200) -> list[str]:
    """The first ``limit`` images of ``folder`` (recursively, sorted)."""
    found = sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return found[:limit]
