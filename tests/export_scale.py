"""``dsseg export`` at scale: a synthetic segment-job output (a million rows by default) exported in each
format by its own process; prints the time, rows/s and peak resident memory of each as JSON.

    python tests/export_scale.py [--rows 1000000] [--formats coco,hf] [--work DIR] [--side 32] [--named]
                                 [--limit N] [--timeout S]

Not a CI test (minutes per format). See dsseg/benchmark/export.py for the synthetic output and
docs/exports.md ("At scale") for measured numbers. ``--work`` keeps the output and the exports
(the output is reused by a rerun); the default temporary folder is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsseg.benchmark.export import run_benchmark  # noqa: E402
from dsseg.export.settings import FORMATS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic output (1000000)")
    parser.add_argument("--formats", default="coco,hf", help=f"comma-separated, of {', '.join(FORMATS)} (coco,hf)")
    parser.add_argument("--work", help="keep the synthetic output and the exports here (reused when present)")
    parser.add_argument("--side", type=int, default=32, help="image and mask side in pixels (32)")
    parser.add_argument("--named", action="store_true", help="named segments with scores (default class-agnostic)")
    parser.add_argument("--limit", type=int, help="export only the first N ok rows")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one export may run (3600)")
    args = parser.parse_args()
    formats = args.formats.split(",")
    if unknown := sorted(set(formats) - set(FORMATS)):
        parser.error(f"unknown formats {unknown}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dsseg-export-scale-"))
    try:
        report = run_benchmark(args.rows, formats, work, args.side, args.named, args.limit, args.timeout)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0 if all(result["status"] == 0 for result in report["exports"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
