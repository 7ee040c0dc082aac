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

from dsseg.commands.common import (
    CAPTIONER_HELP,
    CommandParser,
    UsageError,
    add_method_arguments,
    add_model_arguments,
    batch_size_value,
    params_from_args,
    plain,
    positive_int,
)
from dsseg.errors import ConfigError


def build_parser() -> CommandParser:
    parser = CommandParser(prog="dsseg benchmark", description=plain(__doc__))
    parser.add_argument(
        "--image",
        help="image to segment (default: a synthetic 481×321 JPEG, the size of a BSDS500 image, drawn in process)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=batch_sizes_value,
        default=(1,),
        help="comma-separated batch sizes, auto = fit free memory (default 1)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        help="timed runs per batch size after one warm-up (default %(default)s)",
    )
    parser.add_argument("--json", metavar="OUT", help="write the JSON report to this file instead of stdout")
    parser.add_argument(
        "--full-forward",
        action="store_true",
        help="run every capturing forward to its end (the default stops after the last module the method reads)",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also time each stage's straightforward version (slow; needs a source checkout: tests/oracles)",
    )
    parser.add_argument(
        "--class-counts",
        type=class_counts_value,
        help="comma-separated numbers of candidate classes to time (the first N of --classes/--vocabulary, else COCO-80)",
    )
    parser.add_argument(
        "--versus",
        choices=["diffseg", "ncut"],
        help="also time this method's aggregate + segment (defaults) on the same self-attention as --method's "
        "(interleaved runs, medians, their ratio), e.g. --method ncut --versus diffseg",
    )
    parser.add_argument(
        "--precision-study",
        nargs="+",
        metavar="IMAGE",
        help="instead of timing: how far each --dtype's labels and attention are from float32's on these images, "
        "for diffseg, ncut, openvocab and diffcut (dsseg.benchmark.precision); on the CPU",
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
    add_model_arguments(parser, dtype_list=True)
    add_method_arguments(parser)
    return parser


def write_report(report: dict, path: str | None) -> None:
    """The report as strict JSON (stages that did not run are null): to ``path`` when given (a
    line on stderr says where), else to stdout."""
    from dsseg.evaluation.metrics import json_ready

    text = json.dumps(json_ready(report), indent=2, default=str, ensure_ascii=False)
    if path:
        Path(path).write_text(text + "\n")
        print(f"dsseg benchmark: report written to {path}", file=sys.stderr)
    else:
        print(text)


def explore_run(args: argparse.Namespace) -> int:
    """``--explore``: the explorer's latencies as JSON (``dsseg.benchmark.explore``)."""
    import shutil
    import tempfile

    if args.explore_rows is not None and args.explore_rows < 2:
        raise ConfigError("explore_rows", "must be ≥ 2 (two configs)")
    chromium = shutil.which(args.chromium) if args.browser else None
    if args.browser and chromium is None:
        raise ConfigError("chromium", f"{args.chromium!r} not found: give the path of a Chromium binary")
    try:
        from dsseg.benchmark.explore import explore_report
        from dsseg.benchmark.image import synthetic_jpeg
        from dsseg.io.images import decode_image, load_rgb
    except ImportError as error:
        raise UsageError(f"--explore needs {error.name}: pip install -e '.[explore]'") from None
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
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write_report(report, args.json)
    return 0


def precision_run(args: argparse.Namespace) -> int:
    """``--precision-study``: each non-float32 ``--dtype`` against float32 (``dsseg.benchmark.precision``)."""
    from dsseg.benchmark.precision import STUDY_METHODS, precision_study

    missing = [path for path in args.precision_study if not Path(path).is_file()]
    if missing:
        raise ConfigError("precision_study", f"{missing[0]}: no such file")
    others = [dtype for dtype in args.dtype if dtype not in ("auto", "float32")] or ["bfloat16"]
    reports = [precision_study(args.backbone, args.precision_study, other, STUDY_METHODS) for other in others]
    write_report(reports[0] if len(reports) == 1 else {"studies": reports}, args.json)
    return 0


def class_counts_value(text: str) -> tuple[int, ...]:
    """``--class-counts``: comma-separated integers ≥ 1."""
    try:
        counts = tuple(int(n) for n in text.split(",") if n.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers ≥ 1, e.g. 1,5,20; got {text!r}")
    return counts


def batch_sizes_value(text: str) -> tuple[int | str, ...]:
    """``--batch-sizes``: comma-separated positive integers or auto."""
    return tuple(batch_size_value(b.strip()) for b in text.split(","))


def run(args: argparse.Namespace) -> int:
    if args.image is not None and not Path(args.image).is_file():
        raise ConfigError("image", f"{args.image}: no such file")
    if args.explore:
        return explore_run(args)
    if args.browser or args.explore_rows:
        raise UsageError("--browser and --explore-rows go with --explore")
    from dsseg.benchmark.latency import LatencyRequest, benchmark, print_comparison, print_table, side_by_side
    from dsseg.spec import MethodSpec

    params = params_from_args(args)
    spec = MethodSpec(args.method, params)
    if args.compare and not spec.resolved.extraction.capture.self_attention:
        raise ConfigError("compare", f"times the attention stages; {args.method} reads one layer's features instead")
    if args.versus and not spec.resolved.extraction.capture.self_attention:
        raise ConfigError("versus", f"compares self-attention methods; {args.method} reads none")
    if args.compare and spec.resolved.extraction.preparation.geometry == "aspect":
        raise ConfigError("compare", "needs square inputs: geometry center_crop or squash")
    if args.compare:
        from dsseg.benchmark.checkout import NEEDS_CHECKOUT, oracles_available

        if not oracles_available():
            raise ConfigError("compare", NEEDS_CHECKOUT)
    if args.precision_study:
        return precision_run(args)
    requests = [
        LatencyRequest(
            image=args.image,
            backbone=args.backbone,
            method=args.method,
            params=params,
            batch_sizes=args.batch_sizes,
            repeats=args.repeats,
            compare=args.compare,
            class_counts=args.class_counts or (),
            captioner=args.captioner,
            device=args.device,
            dtype=dtype,
            offline=args.offline,
            compile=args.compile,
            full_forward=args.full_forward,
            versus=args.versus,
        )
        for dtype in args.dtype
    ]
    reports = []
    for request in requests:
        reports.append(benchmark(request))
        print_table(reports[-1])
        if reports[-1]["comparison"]:
            print_comparison(reports[-1]["comparison"])
        if reports[-1]["versus"]:
            versus = reports[-1]["versus"]
            print(
                f"aggregate + segment on the same attention, median ms: {versus['median_ms']} (ratio {versus['ratio']})",
                file=sys.stderr,
            )
    write_report(reports[0] if len(reports) == 1 else side_by_side(reports), args.json)
    return 0
