"""The segment job on Ray Data: plan → decode (CPU tasks) → segment (actor pool) → encode + write (CPU tasks).

Re-running the same command on the same output resumes: images that already have a row for
a config are not redone, and the run ends with exactly one row per image × config.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from importlib import metadata
from typing import Any

from dsseg.io.files import STALE_SECONDS
from dsseg.io.results import (
    check_output,
    clear_success,
    deduplicate,
    done_pairs,
    mark_success,
    remove_orphaned_temporaries,
    remove_results,
    scan,
    write_config,
)
from dsseg.io.schema import TIMING_STAGES
from dsseg.io.sources import ITEM_SCHEMA, list_inputs
from dsseg.job.config import SegmentJob
from dsseg.job.console import ProgressLine, filtered_stderr, quiet_ray_data, without_token_auth_notice
from dsseg.job.decode import decode_batch

# Memory reserved per decode task. Besides guarding against over-subscription, a resource
# shape unlike the model actors' keeps Ray from fusing decoding into the actors, so CPU
# decoding overlaps with model work instead of running inside the actor.
DECODE_TASK_MEMORY = 512 * 1024**2
# The encode-and-write tasks draw masks at the original size (up to max_pixels int32 labels).
WRITE_TASK_MEMORY = 1024 * 1024**2


# Rows per input block: enough blocks for parallel decoding, few enough to keep scheduling cheap.
MAX_BLOCK_ROWS = 256


def plan(job: SegmentJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(every input item, the items still to segment, each with the config ids it lacks)."""
    check_output(job.output, job.input, other_inputs=job.append or job.overwrite, other_files=job.append)
    items = list_inputs(job.input, job.limit, job.shard)
    job.check_classes(items)
    if job.overwrite:
        remove_results(job.output, job.shard)
    done = done_pairs(scan(job.output), retry_errors=job.retry_errors)
    ids = job.config_ids()
    todo = []
    for item in items:
        missing = [cid for cid in ids if (cid, item["image_id"]) not in done]
        if missing:
            todo.append({**item, "configs": missing})
    return items, todo


_joined_cluster = False  # whether this process's Ray is an existing cluster (set by init_ray)


def init_ray(address: str | None = None) -> bool:
    """Connect to ``address`` (or ``$RAY_ADDRESS``, as under ``ray job submit``), or join a local
    head already running on this machine (``ray start --head``), else start an embedded local Ray
    with room for the read tasks beside the actor pool. Returns True when on an existing cluster
    (which may autoscale, and whose resources are its own)."""
    import ray

    global _joined_cluster
    if ray.is_initialized():
        return _joined_cluster
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, logging_level=logging.WARNING)
        _joined_cluster = True
    else:
        try:
            # Logical CPUs above the physical count keep read tasks running beside a CPU actor
            # (an actor pool that takes every CPU starves the read tasks and hangs).
            with without_token_auth_notice():
                ray.init(num_cpus=(os.cpu_count() or 1) + 2, include_dashboard=False, logging_level=logging.WARNING)
            _joined_cluster = False
        except ValueError as error:  # Ray found a local head: join it as it is, no resources of ours
            if "existing cluster" not in str(error):
                raise
            ray.init(logging_level=logging.WARNING)
            _joined_cluster = True
    cpus = ray.cluster_resources().get("CPU", 0)
    where = (
        f"the Ray cluster at {ray.get_runtime_context().gcs_address}" if _joined_cluster else "an embedded local Ray"
    )
    print(f"dsseg: running on {where} ({cpus:g} CPUs)", file=sys.stderr)
    return _joined_cluster


def build_dataset(job: SegmentJob, todo: list[dict[str, Any]], gpus: float, worker: type | None = None):
    """The Ray Data graph over ``todo`` items; yields WRITTEN_SCHEMA rows as part files land.
    ``worker``: the model stage's callable class (default ``SegmentWorker``, or a subclass)."""
    import pyarrow as pa
    import ray

    from dsseg.job.model_stage import PROBE_CLASSES, SegmentWorker
    from dsseg.job.write import encode_and_write

    workers = min(job.num_workers, len(todo))
    items = pa.Table.from_pylist(todo, schema=ITEM_SCHEMA.append(pa.field("configs", pa.list_(pa.string()))))
    per_worker = -(-len(todo) // workers)
    call_rows = min(job.rows_per_model_call, per_worker)  # under "auto", small runs still reach every actor
    block_rows = min(MAX_BLOCK_ROWS, max(call_rows, -(-len(todo) // (8 * workers))))
    dataset = ray.data.from_arrow([items.slice(start, block_rows) for start in range(0, len(todo), block_rows)])
    dataset = dataset.map_batches(
        decode_batch,
        fn_kwargs={
            "preparation": job.preparation,
            "max_pixels": job.max_pixels,
            "max_side": job.max_image_side,
            "exif_transpose": job.exif_transpose,
        },
        batch_size=call_rows,
        batch_format="pyarrow",
        memory=DECODE_TASK_MEMORY,
    )
    # Ray Data restarts a dead model actor and retries its batch (max_restarts and
    # max_task_retries default to -1 for actor pools), so an OOM-killed actor loses no rows.
    longest_class_list = max((len(item.get("classes") or ()) for item in todo), default=0)
    dataset = dataset.map_batches(
        worker or SegmentWorker,
        fn_constructor_kwargs={"job": job, "probe_classes": max(PROBE_CLASSES, longest_class_list)},
        compute=ray.data.ActorPoolStrategy(size=workers),
        batch_size=call_rows,
        batch_format="pyarrow",
        num_gpus=gpus,
        num_cpus=1,
    )
    return dataset.map_batches(
        encode_and_write,
        fn_kwargs={"output": job.output, "mask_frame": job.mask_frame},
        batch_size=job.rows_per_file,
        batch_format="pyarrow",
        memory=WRITE_TASK_MEMORY,
    )


class RunStats:
    """Running totals of the rows written, kept small on the driver however many images run.

    Images are counted as rows × (images / rows) of the work planned: exact once every planned
    row is written, proportional before (images need different numbers of config rows on resume).
    """

    def __init__(self, planned_images: int = 0, planned_rows: int = 0) -> None:
        self.images_per_row = planned_images / planned_rows if planned_rows else 0.0
        self.rows = 0
        self.ok = 0
        self.reasons: Counter[str] = Counter()
        self.stage_sums: dict[str, float] = dict.fromkeys(TIMING_STAGES, 0.0)
        self.stage_counts: dict[str, int] = dict.fromkeys(TIMING_STAGES, 0)

    @property
    def images(self) -> float:
        return self.rows * self.images_per_row

    @property
    def error_images(self) -> int:
        """Images whose rows are errors (an unreadable image has one error row per config)."""
        return round((self.rows - self.ok) * self.images_per_row)

    def add(self, batch: Any) -> None:
        """Fold in a WRITTEN_SCHEMA batch (pyarrow table)."""
        self.rows += len(batch)
        for status, error, timings in zip(
            *(batch.column(name).to_pylist() for name in ("status", "error", "timings_ms"))
        ):
            if status != "ok":
                self.reasons[(error or "").split(":", 1)[0]] += 1
                continue
            self.ok += 1
            for stage, ms in timings.items():
                if ms is not None:
                    self.stage_sums[stage] += ms
                    self.stage_counts[stage] += 1

    def summary(self, seconds: float) -> dict[str, Any]:
        """Images/s, mean per-stage milliseconds of the ok rows and errors by reason code."""
        return {
            "images_segmented": round(self.images),
            "rows_written": self.rows,
            "ok": self.ok,
            "error": self.rows - self.ok,
            "errors_by_reason": dict(self.reasons.most_common()),
            "images_per_second": round(self.images / seconds, 3) if seconds > 0 else None,
            "mean_stage_ms": {
                stage: round(total / self.stage_counts[stage], 1)
                for stage, total in self.stage_sums.items()
                if self.stage_counts[stage]
            },
        }


PROGRESS_SECONDS = 30.0  # how often the driver prints a progress line outside a terminal (`ray job logs`)


def run_segment_job(job: SegmentJob, address: str | None = None, worker: type | None = None) -> dict[str, Any]:
    """Run (or resume) the job; returns a summary. ``worker``: the model stage's callable class
    (default ``dsseg.job.model_stage.SegmentWorker``)."""
    from dsseg.model.backbone import check_backbone_available

    start, started_at = time.perf_counter(), time.time()
    items, todo = plan(job)
    if todo:
        check_backbone_available(job.backbone, job.offline)
        if job.captioner:
            from dsseg.model.captioner import check_captioner_available

            check_captioner_available(job.captioner, job.offline)
    write_config(job.output, job.record() | {"versions": library_versions()})
    clear_success(job.output, job.shard)
    expected_rows = sum(len(item["configs"]) for item in todo)
    stats = RunStats(len(todo), expected_rows)
    ray_seconds = 0.0
    if todo:
        on_cluster = init_ray(address)
        gpus = gpus_per_worker(job, on_cluster)
        quiet_ray_data()
        ray_start = time.perf_counter()
        progress = ProgressLine(len(todo), PROGRESS_SECONDS)
        progress.update(0, 0)
        with filtered_stderr():
            for batch in build_dataset(job, todo, gpus, worker).iter_batches(batch_size=None, batch_format="pyarrow"):
                stats.add(batch)
                progress.update(stats.images, stats.error_images)
            progress.update(stats.images, stats.error_images, final=True)
        ray_seconds = time.perf_counter() - ray_start
    summary = {
        "output": job.output,
        "config_ids": job.config_ids(),
        "images": len(items),
        "already_done": len(items) - len(todo),
        **stats.summary(ray_seconds),
    }
    scanned = scan(job.output)
    summary["duplicates_removed"] = deduplicate(job.output, scanned)
    done, ids = done_pairs(scanned), job.config_ids()
    summary["missing"] = sum((cid, item["image_id"]) not in done for item in items for cid in ids)
    summary["complete"] = summary["missing"] == 0
    # Temporary part files of killed writers: once an unsharded run is complete, every one written
    # before it started is an orphan; shards of one output may run side by side, so theirs must
    # also be an hour old (a writer that slow is dead).
    orphaned_before = started_at if summary["complete"] and job.shard is None else time.time() - STALE_SECONDS
    summary["temporaries_removed"] = remove_orphaned_temporaries(job.output, orphaned_before)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    if summary["complete"]:
        mark_success(job.output, job.shard, summary)
    return summary


def gpus_per_worker(job: SegmentJob, on_cluster: bool) -> float:
    """GPUs per model actor: as given; else 0 for ``--device cpu``, 1 for ``--device cuda``
    (also on an autoscaling cluster whose GPU nodes are not up yet), and for ``auto`` 1 when
    the cluster has GPUs now."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if job.gpus_per_worker is not None:
        wanted = job.gpus_per_worker
    elif job.device == "cpu":
        wanted = 0.0
    elif job.device == "cuda" or gpus > 0:
        wanted = 1.0
    else:
        print(
            "dsseg: no GPUs in the Ray cluster, running the model on CPU (on an autoscaling cluster pass --device cuda)",
            file=sys.stderr,
        )
        wanted = 0.0
    if wanted and not on_cluster and gpus < wanted:
        raise RuntimeError(
            f"{wanted} GPU(s) per worker requested but this machine's Ray has {gpus:g}; use --device cpu"
        )
    return wanted


def library_versions() -> dict[str, str]:
    """Installed versions of dsseg and the libraries that shape its results."""
    versions = {}
    for name in ("dsseg", "torch", "diffusers", "transformers", "ray", "numpy", "pycocotools"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
