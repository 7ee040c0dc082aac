"""``dsseg evaluate`` (= ``jobs/evaluate.py``): benchmark evaluation on Ray: segment a dataset's images with one or more method configs (the
segment job, resumable), score every row against the ground truth in an actor pool, sum the
per-image statistics per config, and write the results.

    python jobs/evaluate.py --preset NAME --root DIR --output DIR [--backbone tiny|HUB_ID|DIR] [--limit N]
    python jobs/evaluate.py --list-presets
    python jobs/evaluate.py --dataset cocostuff27 --root DIR --output DIR \\
        [--methods diffseg,ncut | --config sweep.yaml] [--param NAME=VALUE ...] [--frame model|label] \\
        [--score-size N] [--tune-on SPLIT] [--limit N] [--batch-size 4] [--num-workers 1]

A preset (``--list-presets``) is one published table row: dataset, backbone, extraction, method
parameters, frame and protocol; the report prints its published number beside ours. Writes
OUTPUT/metrics.json (every protocol for every config), OUTPUT/per_image.parquet (one record per
image × config), OUTPUT/report.md (tables laid out like the papers') and OUTPUT/report.html
(+ report_files/: best, worst and random images with the ground truth and each config's
segments). The segment rows stay in OUTPUT/run (re-running resumes); a tuning split's in
OUTPUT/tune/<split>/. Benchmark images are read in their stored pixel order (no EXIF rotation),
the order their labels were drawn in. Datasets: see dsseg.evaluation.datasets.DATASETS.
"""

from __future__ import annotations

import argparse

from dsseg.commands.common import (
    CAPTIONER_HELP,
    CommandParser,
    UsageError,
    add_model_arguments,
    batch_size_value,
    plain,
    positive_int,
    request_from,
)
from dsseg.evaluation.datasets import DATASETS
from dsseg.evaluation.plan import EvaluationRequest
from dsseg.evaluation.scoring import FRAMES


def build_parser() -> CommandParser:
    parser = CommandParser(prog="dsseg evaluate", description=plain(__doc__))
    parser.add_argument(
        "--preset", help="a published table row to reproduce (see --list-presets); fixes every setting below it"
    )
    parser.add_argument(
        "--list-presets",
        nargs="?",
        const="full",
        choices=("full", "names"),
        help="print every preset's row, paper, dataset and settings (names: one line per preset), then exit",
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="the benchmark reader (a preset names its own)")
    parser.add_argument("--root", help="the dataset's folder (or, for --dataset manifest, the manifest file)")
    parser.add_argument("--output", help="results folder (re-running resumes the segment rows)")
    parser.add_argument("--split", help="dataset split (the preset's, else each reader's default)")
    parser.add_argument("--classes", help="class names for --dataset manifest, comma-separated, in label order")
    parser.add_argument("--methods", help="comma-separated methods, each with its paper's defaults (default diffseg)")
    parser.add_argument("--config", help="YAML run file whose `configs:` list gives the method configs (sweeps)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="parameter for every config")
    parser.add_argument(
        "--frame", choices=FRAMES, help="model: the 512² model frame (DiffSeg protocol); label: the ground truth's size"
    )
    parser.add_argument(
        "--score-size",
        type=positive_int,
        metavar="N",
        help="score the model frame on a grid of longer side N, prediction and ground truth sampled by PyTorch's "
        "nearest resize (DiffCut's eval_diffcut.py: 128 for its 1024² input); default: the preset's, else the frame's pixels",
    )
    parser.add_argument(
        "--class-filter",
        help="narrow each image's candidate classes (openvocab): clip:MODEL, caption, caption+clip:MODEL, "
        "package.module:factory, or none",
    )
    parser.add_argument(
        "--candidates",
        metavar="FILE",
        help="per-image candidate classes from a file (openvocab): DiffSegmenter's released lists (the "
        "diffsegmenter-* presets need them) or your own .json/.jsonl/.parquet of image id → names",
    )
    parser.add_argument("--captioner", help=CAPTIONER_HELP + " (default: the preset's)")
    parser.add_argument(
        "--tune-on",
        metavar="SPLIT",
        help="choose openvocab's background threshold on this split (never the evaluated one); with a preset "
        "whose threshold is an oracle one, the held-out number is reported beside it",
    )
    parser.add_argument("--tune-limit", type=positive_int, help="use only the first N images of the tuning split")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    parser.add_argument(
        "--batch-size", type=batch_size_value, default=4, help="images per model call, or auto (default %(default)s)"
    )
    parser.add_argument("--num-workers", type=positive_int, default=1, help="model actors (and scoring actors)")
    parser.add_argument(
        "--report-images",
        type=int,
        default=2,
        help="best, worst and random images each in report.html (default %(default)s)",
    )
    add_model_arguments(parser, backbone_default=None, note=", or the preset's")
    return parser


def request_of(args: argparse.Namespace) -> EvaluationRequest:
    """The typed request of parsed flags (``--root`` and ``--output`` are required here)."""
    if not args.root or not args.output:
        missing = " and ".join(flag for flag, value in (("--root", args.root), ("--output", args.output)) if not value)
        raise UsageError(f"{missing} required")
    return request_from(args, EvaluationRequest)


def run(args: argparse.Namespace) -> int:
    """Exit 0 once every image is segmented and scored (1: rows are missing; rerun to resume)."""
    if args.list_presets:
        from dsseg.evaluation.presets import list_presets

        print(list_presets(names_only=args.list_presets == "names"))
        return 0
    from dsseg.evaluation.evaluate import evaluate

    return evaluate(request_of(args))
