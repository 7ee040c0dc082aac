"""``dsseg compact OUTPUT`` (= ``jobs/compact.py``): merge a job output's small part files; exit 0 once compacted."""

from __future__ import annotations

import argparse
import json

from dsseg.commands.common import CommandParser


def target_mb_value(text: str) -> float:
    """``--target-mb``: a number of MiB > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value * 1024**2 < 1:
        raise argparse.ArgumentTypeError(f"must be a number > 0; got {text!r}")
    return value


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="dsseg compact",
        description="Merge the small part files of a segment job's output (segments/config=<id>/part-*.parquet) "
        "into parts of about --target-mb, rows kept exactly; prints a JSON summary. Each merge is committed "
        "by a record (_compaction-*.json): dsseg's readers and a resumed job see the old parts or the new "
        "one, never both, even if compaction is killed; rerun it to finish or clean up. Parts a job is "
        "still writing are not touched, but do not run it while a job's final de-duplication (its last "
        "step) runs on the same output, nor while an evaluation or the explorer reads it, nor two compactions of "
        "one output at once. Readers that list the "
        "folder themselves (pq.read_table(OUTPUT/segments)) may see both old and new rows for a moment.",
    )
    parser.add_argument("output", metavar="OUTPUT", help="a segment job's --output folder or URI")
    parser.add_argument(
        "--target-mb", type=target_mb_value, default=128.0, help="size of a merged part in MiB (default 128)"
    )
    parser.add_argument(
        "--config", action="append", metavar="ID", help="only this config's parts (repeatable; default: every config)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from dsseg.io.compact import compact

    summary = compact(args.output, round(args.target_mb * 1024**2), args.config)
    print(json.dumps(summary, indent=2))
    return 0
