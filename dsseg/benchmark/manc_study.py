"""How NCut's stopping rules behave on planted-partition attention, power walk k = 1..5.

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
import sys
import time
from pathlib import Path

from dsseg.cli import plain

# (graph, stopping rule, threshold): the rules of the paper (DWC §3 and its baselines)
RULES = (
    ("dot", "manc_ncut", None),
    ("dot", "manc_mincut", None),
    ("dot", "threshold", 0.4),
    ("random_walk", "manc_ncut", None),
    ("random_walk", "threshold", 0.3),
)


def integers(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 1,2,3; got {text!r}") from None


def root_threshold(attention: dict, graph: str, power: int) -> float:
    """The MAN-C threshold n·T/(2m) of the whole image's graph (before any split)."""
    from dsseg.api import bundle_from_attention
    from dsseg.methods.aggregate import aggregate_self_attention
    from dsseg.methods.ncut import NCutConfig, build_graph, manc_threshold, ncut_levels, power_walk

    config = NCutConfig(graph=graph, power=power)
    bundle = bundle_from_attention(attention)
    aggregated, _ = aggregate_self_attention(bundle.self_attention, ncut_levels(list(bundle.self_attention), config))
    built = build_graph(power_walk(aggregated[0], power), config)
    total, edges = built.edge_stats()
    return manc_threshold(built.size, total, edges)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regions", type=integers, default=[8, 10, 12], help="planted region counts (default 8,10,12)")
    parser.add_argument(
        "--powers", type=integers, default=[1, 2, 3, 4, 5], help="power walk exponents k (default 1..5)"
    )
    parser.add_argument("--heads", type=int, default=8, help="attention heads per level (default 8, as SD)")
    parser.add_argument("--json", help="also write the records to this file")
    args = parser.parse_args(argv)

    import dsseg
    from dsseg.benchmark.planted import pixel_regions, planted_attention, voronoi_regions
    from dsseg.evaluation.metrics import adjusted_rand_index

    records = []
    for count in args.regions:
        regions = voronoi_regions(64, count, seed=count)
        attention = planted_attention(regions, heads=args.heads, affinity=6.0, locality=0.3, noise=2.5, seed=count)
        truth = pixel_regions(regions)
        for graph, stopping, threshold in RULES:
            for power in args.powers:
                params = {"graph": graph, "stopping": stopping, "power": power}
                if threshold is not None:
                    params["threshold"] = threshold
                start = time.perf_counter()
                labels = dsseg.segment_attention(attention, method="ncut", **params)
                records.append({
                    "regions": count, "graph": graph, "stopping": stopping if threshold is None else f"threshold {threshold}",
                    "power": power, "segments": int(len(set(labels.ravel().tolist()))),
                    "ari": round(adjusted_rand_index(labels, truth), 3), "seconds": round(time.perf_counter() - start, 2),
                    "root_manc_threshold": round(root_threshold(attention, graph, power), 4),
                })  # fmt: skip
                print(json.dumps(records[-1]), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    print(json.dumps(records))
    print("\n| regions | graph | stopping | " + " | ".join(f"k={k}" for k in args.powers) + " |")
    print("|---|---|---|" + "---|" * len(args.powers))
    for count in args.regions:
        for graph, stopping, threshold in RULES:
            name = stopping if threshold is None else f"threshold {threshold}"
            cells = [
                f"{r['segments']} ({r['ari']:.2f})"
                for r in records
                if r["regions"] == count and r["graph"] == graph and r["stopping"] == name
            ]
            print(f"| {count} | {graph} | {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
