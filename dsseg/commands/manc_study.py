"""``dsseg manc-study`` (= ``jobs/manc_study.py``): how NCut's stopping rules behave on planted-partition attention, power walk k = 1..5.

    python jobs/manc_study.py [--regions 8,10,12] [--powers 1,2,3,4,5] [--heads 8] [--json OUT.json]

Each case: Voronoi regions on a 64² latent, SD-shaped self-attention (``--heads`` heads at
64/32/16/8, rows summing to 1, same-region affinity, locality and noise; ``dsseg.benchmark.planted``),
segmented by ``ncut`` under each stopping rule (MAN-C with the NCut cost, MAN-C with the scaled
min-cut, and the fixed thresholds of the paper's baselines) and graph. Prints a JSON list of
{regions, graph, stopping, power, segments, ari, root_manc_threshold} and a table; nothing here is
tuned to it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dsseg.commands.common import CommandParser, plain, positive_int


def integers(text: str) -> list[int]:
    """Comma-separated integers ≥ 1, e.g. ``1,2,3``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers ≥ 1, e.g. 1,2,3; got {text!r}")
    return values


def build_parser() -> CommandParser:
    parser = CommandParser(prog="dsseg manc-study", description=plain(__doc__))
    parser.add_argument("--regions", type=integers, default=[8, 10, 12], help="planted region counts (default 8,10,12)")
    parser.add_argument(
        "--powers", type=integers, default=[1, 2, 3, 4, 5], help="power walk exponents k (default 1..5)"
    )
    parser.add_argument("--heads", type=positive_int, default=8, help="attention heads per level (default 8, as SD)")
    parser.add_argument("--json", help="also write the records to this file")
    return parser


def run(args: argparse.Namespace) -> int:
    from dsseg.benchmark.manc_study import run_study, study_table

    records = run_study(args.regions, args.powers, args.heads)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    print(json.dumps(records))
    print("\n" + study_table(records, args.regions, args.powers))
    return 0
