"""``dsseg benchmark`` (``jobs/benchmark.py``): per-stage latency of the segmentation path, printed
as JSON (and a table on stderr).

    dsseg benchmark --backbone tiny|sd-v1-random|HUB_ID --device cpu|cuda
                    [--batch-sizes 1,4,auto] [--repeats 3] [--image PATH] [--json OUT.json]
                    [--method diffseg] [--param NAME=VALUE ...] [--noise ...] [--compare]
                    [--method openvocab --class-counts 1,5,20,80]
    dsseg benchmark --explore [--browser] [--explore-rows 1000000] [--backbone tiny] [--image PATH]

See ``dsseg.benchmark.latency`` for the stages and the comparison mode, ``dsseg.benchmark.explore``
for the explorer's (``--explore``: each control's change to a new overlay at 512², in the app's handler
and with ``--browser`` in Chromium; the output browser on a synthetic output of ``--explore-rows`` rows).
Without ``--image`` the input is a synthetic 481×321 JPEG drawn in process (``dsseg.benchmark.image``).
``--compare`` times dsseg against the float64 transcriptions kept with the tests (``tests/oracles``):
it runs from a source checkout (``python jobs/benchmark.py --compare``), not from an installed wheel.
The measurement code (and torch) loads only after the flags are read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dsseg.cli import (
    CAPTIONER_HELP,
    METHOD_PARAM_FLAGS,
    add_method_arguments,
    add_model_arguments,
    batch_size_value,
    flag_message,
    params_from_args,
    plain,
)
from dsseg.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsseg benchmark", description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--image",
        help="image to segment (default: a synthetic 481×321 JPEG, the size of a BSDS500 image, drawn in process)",
    )
    parser.add_argument(
        "--batch-sizes", default="1", help="comma-separated batch sizes, auto = fit free memory (default %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per batch size after one warm-up (default %(default)s)"
    )
    parser.add_argument("--json", help="also write the report to this file")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also time each stage's straightforward version (slow; needs a source checkout: tests/oracles)",
    )
    parser.add_argument(
        "--class-counts",
        help="comma-separated numbers of candidate classes to time (the first N of --classes/--vocabulary, else COCO-80)",
    )
    parser.add_argument(
        "--captioner",
        help=CAPTIONER_HELP + "; tiny or blip-base-random (BLIP-base's architecture, random weights) time it",
    )
    group = parser.add_argument_group("explorer (dsseg explore; needs the explore extra)")
    group.add_argument(
        "--explore", action="store_true", help="time the explorer's controls (the image is resized to 512²)"
    )
    group.add_argument("--browser", action="store_true", help="with --explore: also in Chromium (needs playwright)")
    group.add_argument("--chromium", default="chromium", help="the Chromium binary for --browser (default %(default)s)")
    group.add_argument("--port", type=int, default=7871, help="port for --browser's app (default %(default)s)")
    group.add_argument(
        "--explore-rows", type=int, help="with --explore: also open, query and page a synthetic output of N rows"
    )
    add_model_arguments(parser)
    add_method_arguments(parser)
    return parser


def explore_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``--explore``: the explorer's latencies as JSON (``dsseg.benchmark.explore``)."""
    import shutil
    import tempfile

    if args.explore_rows is not None and args.explore_rows < 2:
        parser.error("--explore-rows must be ≥ 2 (two configs)")
    if args.image is not None and not Path(args.image).is_file():
        parser.error(f"--image {args.image}: no such file")
    chromium = shutil.which(args.chromium) if args.browser else None
    if args.browser and chromium is None:
        parser.error(f"--chromium {args.chromium!r} not found: give the path of a Chromium binary")
    try:
        from dsseg.benchmark.explore import explore_report
        from dsseg.benchmark.image import synthetic_jpeg
        from dsseg.io.images import decode_image, load_rgb
    except ImportError as error:
        print(f"error: {error.name} is missing: pip install -e '.[explore]'", file=sys.stderr)
        return 2
    from PIL import Image

    folder = tempfile.mkdtemp(prefix="dsseg-explore-bench-")
    square = str(Path(folder) / "image-512.png")
    rgb = decode_image(synthetic_jpeg(), max_pixels=None)[0] if args.image is None else load_rgb(args.image)
    Image.fromarray(rgb).resize((512, 512), Image.BILINEAR).save(square)
    device = None if args.device == "auto" else args.device
    try:
        report = explore_report(
            args.backbone,
            square,
            device,
            args.classes or "horse,grass,sky",
            args.explore_rows,
            args.browser,
            chromium,
            args.port,
        )
    except RuntimeError as error:  # a missing backbone
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    text = json.dumps(report, indent=2, default=str, ensure_ascii=False)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.explore:
        return explore_main(args, parser)
    if args.browser or args.explore_rows:
        parser.error("--browser and --explore-rows go with --explore")
    from dsseg.spec import MethodSpec

    try:
        args.batch_sizes = [batch_size_value(b.strip()) for b in args.batch_sizes.split(",")]
        args.class_counts = [int(n) for n in args.class_counts.split(",")] if args.class_counts else []
        if args.class_counts and min(args.class_counts) < 1:
            raise ValueError("--class-counts must be ≥ 1")
        spec = MethodSpec(args.method, params_from_args(args))
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        parser.error(flag_message(error, METHOD_PARAM_FLAGS))
    if args.repeats < 1:
        parser.error("--repeats must be ≥ 1")
    if args.compare and not spec.resolved.extraction.capture.self_attention:
        parser.error(f"--compare times the attention stages; {args.method} reads one layer's features instead")
    if args.compare and spec.resolved.extraction.preparation.geometry == "aspect":
        parser.error("--compare needs square inputs: geometry center_crop or squash")
    if args.compare:
        from dsseg.benchmark.checkout import NEEDS_CHECKOUT, oracles_available

        if not oracles_available():
            parser.error(NEEDS_CHECKOUT)
    if args.image is not None and not Path(args.image).is_file():
        parser.error(f"--image {args.image}: no such file")
    from dsseg.benchmark.latency import benchmark, print_comparison, print_table

    try:
        report = benchmark(args)
    except RuntimeError as error:  # a missing backbone or captioner, no GPU, …: the message says what to do
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ConfigError as error:  # a config the captioner flag does not fit
        parser.error(flag_message(error, (*METHOD_PARAM_FLAGS, "captioner")))
    print_table(report)
    if report["comparison"]:
        print_comparison(report["comparison"])
    text = json.dumps(report, indent=2, default=str)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0
