"""Lose a worker node while a segment job runs, on a three-node local Ray cluster.

    python tests/node_loss.py [--images 24] [--keep DIR]

A head (1 CPU: the driver's decode and write tasks) and two worker nodes (2 CPUs each) start on
this machine (``ray.cluster_utils.Cluster``); a two-actor segment job (``tiny`` backbone) runs;
as soon as the first rows land, the worker node hosting a model actor is removed without
warning (its raylet and every process on it killed). Prints one JSON line: the summary, the node
killed, and the (image, config) pairs found once, twice or not at all. ``tests/test_nodes.py``
runs it in its own process (a cluster needs a fresh ``ray.init``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import ray
from PIL import Image
from ray.cluster_utils import Cluster

from dsseg.io.results import scan
from dsseg.job.config import SegmentJob
from dsseg.job.model_stage import SegmentWorker
from dsseg.job.runner import run_segment_job
from dsseg.spec import MethodSpec


class NodeReportingWorker(SegmentWorker):
    """The model stage, leaving a file named after its node's id in ``folder`` once loaded."""

    folder = ""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        Path(self.folder, ray.get_runtime_context().get_node_id()).touch()


def write_images(folder: Path, count: int) -> None:
    """``count`` 160×120 JPEGs of smooth random colour fields."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        coarse = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((160, 120), Image.Resampling.BICUBIC).save(folder / f"img{index:03d}.jpg")


def kill_a_hosting_node(cluster: Cluster, workers: list, hosts: Path, output: Path, log: dict, stop: threading.Event):
    """Once a part file has landed, remove the worker node that hosts a model actor."""
    while not stop.is_set():
        hosting = {path.name for path in hosts.iterdir()}
        victim = next((node for node in workers if node.node_id in hosting), None)
        if victim is not None and any((output / "segments").rglob("part-*.parquet")):
            log["rows_before_kill"] = len(scan(str(output)))
            cluster.remove_node(victim, allow_graceful=False)
            log["killed_node"] = victim.node_id
            log["killed_at_s"] = round(time.perf_counter() - log["start"], 1)
            return
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--keep", help="work in this folder (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="dsseg-node-loss-"))
    write_images(root / "images", args.images)
    hosts = root / "hosts"
    hosts.mkdir()
    NodeReportingWorker.folder = str(hosts)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    configs = [MethodSpec("diffseg", {"image_size": 128, "kl_threshold": t}) for t in (0.9, 1.1)]
    job = SegmentJob(
        input=str(root / "images"), output=str(root / "run"), backbone="tiny", configs=configs,
        device="cpu", num_workers=2, batch_size=2, rows_per_file=2,
    )  # fmt: skip
    log: dict = {"start": time.perf_counter()}
    stop = threading.Event()
    killer = threading.Thread(target=kill_a_hosting_node, args=(cluster, workers, hosts, root / "run", log, stop))
    killer.start()
    try:
        summary = run_segment_job(job, worker=NodeReportingWorker)
    finally:
        stop.set()
        killer.join()
        ray.shutdown()
        cluster.shutdown()
    counts = Counter((row["image_id"], row["config_id"]) for row in scan(job.output).to_pylist())
    expected = {(f"img{i:03d}.jpg", cid) for i in range(args.images) for cid in job.config_ids()}
    log.pop("start")
    print(
        json.dumps(
            {
                **log,
                "summary": {k: summary[k] for k in ("complete", "rows_written", "ok", "error", "seconds")},
                "pairs_expected": len(expected),
                "pairs_once": sum(counts[pair] == 1 for pair in expected),
                "pairs_twice_or_more": sum(n > 1 for n in counts.values()),
                "pairs_missing": len(expected - set(counts)),
                "nodes_that_hosted_actors": sorted(path.name for path in hosts.iterdir()),
            }
        )
    )


if __name__ == "__main__":
    main()
