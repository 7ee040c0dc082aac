"""The MAN-C study: NCut's stopping rules and graphs on planted-partition attention, power walk k
(``run_study``: records; ``study_table``: Markdown). The command: ``dsseg.commands.manc_study``."""

from __future__ import annotations

import json
import sys
import time

# (graph, stopping rule, threshold): the rules of the paper (DWC §3 and its baselines)
RULES = (
    ("dot", "manc_ncut", None),
    ("dot", "manc_mincut", None),
    ("dot", "threshold", 0.4),
    ("random_walk", "manc_ncut", None),
    ("random_walk", "threshold", 0.3),
)


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


def run_study(regions: list[int], powers: list[int], heads: int = 8) -> list[dict]:
    """One record per (region count, rule, power): {regions, graph, stopping, power, segments,
    ari, seconds, root_manc_threshold}; each record is also printed to stderr as it comes."""
    import dsseg
    from dsseg.benchmark.planted import pixel_regions, planted_attention, voronoi_regions
    from dsseg.evaluation.metrics import adjusted_rand_index

    records = []
    for count in regions:
        planted = voronoi_regions(64, count, seed=count)
        attention = planted_attention(planted, heads=heads, affinity=6.0, locality=0.3, noise=2.5, seed=count)
        truth = pixel_regions(planted)
        for graph, stopping, threshold in RULES:
            for power in powers:
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
    return records


def study_table(records: list[dict], regions: list[int], powers: list[int]) -> str:
    """The records as a Markdown table: segments (ARI) per rule and power."""
    lines = ["| regions | graph | stopping | " + " | ".join(f"k={k}" for k in powers) + " |"]
    lines.append("|---|---|---|" + "---|" * len(powers))
    for count in regions:
        for graph, stopping, threshold in RULES:
            name = stopping if threshold is None else f"threshold {threshold}"
            cells = [
                f"{r['segments']} ({r['ari']:.2f})"
                for r in records
                if r["regions"] == count and r["graph"] == graph and r["stopping"] == name
            ]
            lines.append(f"| {count} | {graph} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
