"""``dsseg job`` (= ``jobs/segment.py``): the Ray segment job; exit 0 when every image × config has a row."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from dsseg.commands.common import (
    CAPTIONER_HELP,
    STRICT_HELP,
    CommandParser,
    add_method_arguments,
    add_model_arguments,
    batch_size_value,
    params_from_args,
    positive_int,
)
from dsseg.errors import ConfigError
from dsseg.model.filter_specs import candidates_filter

if TYPE_CHECKING:
    from dsseg.job.config import SegmentJob


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="dsseg job",
        description="Segment images on Ray; write Parquet rows with COCO RLE masks to --output. "
        "Re-running the same command resumes: finished images are not redone.",
    )
    parser.add_argument(
        "--input", help="image file, folder, glob, URI (s3://, gs://), manifest (.parquet/.jsonl) or .tar shard(s)"
    )
    parser.add_argument(
        "--output", help="output folder or URI: segments/config=<id>/part-*.parquet, config.json, _SUCCESS"
    )
    parser.add_argument(
        "--config", help="YAML run file: any of these settings, and `configs:` — a list of {method: NAME, PARAM: VALUE}"
    )
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else an embedded local Ray)")
    parser.add_argument("--strict", action="store_true", help=STRICT_HELP)
    parser.add_argument(
        "--batch-size",
        type=batch_size_value,
        help="images per model call, or auto: each actor fits its free memory (default 4)",
    )
    parser.add_argument("--num-workers", type=positive_int, help="model actors (default 1)")
    parser.add_argument(
        "--gpus-per-worker", type=float, help="GPUs per actor, fractions allowed (default: 1 if the cluster has GPUs)"
    )
    parser.add_argument("--limit", type=positive_int, help="segment only the first N images (after --shard)")
    parser.add_argument("--shard", help="I/N: only the images whose id hashes to I of N disjoint shards, e.g. 0/4")
    parser.add_argument(
        "--max-image-side", type=int, help="decode images at most this large; masks stay at full size (default 4096)"
    )
    parser.add_argument(
        "--max-pixels", type=int, help="refuse images whose header exceeds this many pixels (default 100000000)"
    )
    parser.add_argument(
        "--rows-per-file", type=int, help="rows per write batch, split into one part file per config (default 256)"
    )
    parser.add_argument(
        "--flush-seconds",
        type=float,
        help="also write a batch once its first row has waited this long, so rows land (and survive Ctrl-C) "
        "within about this time (default 60)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="delete earlier results in --output (with --shard: that shard's) and start afresh",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        default=None,
        help="write into an output that holds other files or another --input's results (recorded in config.json)",
    )
    parser.add_argument(
        "--retry-errors",
        action="store_true",
        default=None,
        help="also redo error rows with a transient reason (read_failed, out_of_memory, model_failed, encode_failed)",
    )
    parser.add_argument(
        "--class-filter",
        help="narrow each image's candidate classes: clip:MODEL (hub id or folder), caption (the classes the image's "
        "caption names), caption+clip:MODEL (either), candidates:FILE or package.module:factory",
    )
    parser.add_argument(
        "--candidates",
        metavar="FILE",
        help="each image's candidate classes from a file (= --class-filter candidates:FILE): .json {image: [names]} or "
        "DiffSegmenter's released lists, .jsonl or .parquet with image_id and classes; matched by id or file stem",
    )
    parser.add_argument("--captioner", help=CAPTIONER_HELP)
    parser.add_argument(
        "--ignore-exif", dest="exif_transpose", action="store_false", default=None,
        help="keep images in their stored pixel order instead of turning them upright by EXIF (as benchmark labels are drawn)",
    )  # fmt: skip
    parser.add_argument(
        "--mask-frame", choices=("original", "model"),
        help="original: masks at the image's size (default); model: in the model-input frame, e.g. the 512² centre crop",
    )  # fmt: skip
    add_model_arguments(parser, backbone_default=None, note=", or the run file's")
    parser.set_defaults(device=None, dtype=None, offline=None, compile=None)
    add_method_arguments(parser)
    parser.set_defaults(method=None)
    return parser


def job_from_args(args: argparse.Namespace) -> SegmentJob:
    """Settings from ``--config`` overlaid by the flags given; ``--method``/``--param`` make one config."""
    from dsseg.job.config import RUN_FILE_KEYS, SegmentJob, load_run_file
    from dsseg.spec import MethodSpec

    settings = load_run_file(args.config) if args.config else {}
    given = {name: getattr(args, name, None) for name in RUN_FILE_KEYS - {"configs"}}  # every setting has a flag
    settings.update({name: value for name, value in given.items() if value is not None})
    if args.candidates:
        settings["class_filter"] = candidates_filter(args.class_filter, args.candidates)
    params = params_from_args(args)
    if args.method is not None or params:
        if "configs" in settings:
            raise ConfigError(
                "config", "give method configs either in --config (configs:) or with --method/--param, not both"
            )
        settings["configs"] = (MethodSpec(args.method or "diffseg", params),)
    for name in ("input", "output"):
        if name not in settings:
            raise ConfigError(name, "required (on the command line or in --config)")
    return SegmentJob(**settings)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every image × config has a row (error rows are results), 1 when rows are
    missing or, with ``--strict``, when an image failed."""
    from dsseg.job.runner import run_segment_job

    summary = run_segment_job(job_from_args(args), address=args.address)
    print(json.dumps(summary, indent=2))
    if not summary["complete"]:
        print(
            f"dsseg: {summary['missing']} image × config rows are missing; re-run the same command to resume",
            file=sys.stderr,
        )
        return 1
    if args.strict and summary["error"]:
        print(f"dsseg: {summary['error']} error rows (--strict): {summary['errors_by_reason']}", file=sys.stderr)
        return 1
    return 0
