"""``dsseg export OUTPUT --format FORMAT --to DIR`` (= ``jobs/export.py``): a segment-job or pseudo-label
output in a labelling or training tool's own format; prints a JSON summary."""

from __future__ import annotations

import argparse
import json

from dsseg.commands.common import CommandParser, positive_int
from dsseg.export.settings import FORMATS


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="dsseg export",
        description="Write one config's rows of a segment-job output (or a pseudo-label output's run-weak / "
        "run-agnostic folder) in a tool's format: hf (Hugging Face datasets Parquet), labelstudio (tasks "
        "with brush predictions), cvat (Segmentation mask 1.1), fiftyone (ImageSegmentationDirectory), "
        "coco (instances JSON, RLE), voc (PNG label maps). Error rows are skipped and counted. The folder "
        "is written aside and moved into place whole: an existing non-empty --to is refused unless "
        "--overwrite, which replaces it whole. See docs/exports.md.",
    )
    parser.add_argument(
        "output", metavar="OUTPUT", help="a segment job's --output (folder or URI) or a pseudo-label output"
    )
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--to", required=True, metavar="DIR", help="the export folder (local; new or empty)")
    parser.add_argument(
        "--config", dest="config_id", metavar="ID", help="the config to export (needed when OUTPUT holds several)"
    )
    parser.add_argument(
        "--images",
        metavar="ROOT",
        help="where the images are: ROOT/<image_id> (default: each row's source); for labelstudio the URL "
        "prefix of data.image (e.g. /data/local-files/?d=images)",
    )
    parser.add_argument("--limit", type=positive_int, metavar="N", help="export the first N ok rows")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --to folder whole")
    parser.add_argument(
        "--no-images", dest="copy_images", action="store_false", help="voc, cvat: do not copy the images"
    )
    parser.add_argument(
        "--shard-rows", type=positive_int, default=100_000, metavar="N", help="hf: rows per Parquet shard (100000)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from dsseg.commands.common import request_from
    from dsseg.export.run import export
    from dsseg.export.settings import ExportSettings

    summary = export(request_from(args, ExportSettings))
    print(json.dumps(summary, indent=2))
    return 0 if summary["rows_exported"] or not summary["rows_skipped"] else 1
