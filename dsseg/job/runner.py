"""The segment job on Ray Data: plan (a stream) → decode (CPU tasks) → segment (actor pool) →
encode (CPU tasks) → part files (the driver's ``PartWriter``).

Re-running the same command on the same output resumes: (image, config) pairs that already
have a row are not redone, and the run ends with exactly one row per image × config. Nothing on
the driver grows with the number of images (``dsseg.job.plan``); rows land by count or by
time (``flush_seconds``); Ctrl-C or SIGTERM writes the rows held and ends with one line.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from importlib import metadata
from typing import Any

import pyarrow as pa

from dsseg.errors import ConfigError
from dsseg.io.files import STALE_SECONDS
from dsseg.io.results import (
    check_output,
    clear_success,
    mark_success,
    remove_orphaned_temporaries,
    remove_results,
    write_config,
)
from dsseg.io.schema import TIMING_STAGES
from dsseg.io.sources import InputPlan, held_items, plan_inputs
from dsseg.job.config import SegmentJob
from dsseg.job.console import ProgressLine, filtered_stderr, quiet_ray_data, without_token_auth_notice
from dsseg.job.decode import decode_batch
from dsseg.job.interrupts import Interrupted, JobInterrupted, interruptible, reclaim_signals
from dsseg.job.plan import (
    DoneIndex,
    PlanTally,
    build_done_index,
    dataset_of_rows,
    plan_items,
    remove_repeated_rows,
    todo_dataset,
)
from dsseg.job.write import PartWriter, encode_rows, flushing_by_time

# Memory reserved per decode task. Besides guarding against over-subscription, a resource
# shape unlike the model actors' keeps Ray from fusing decoding into the actors, so CPU
# decoding overlaps with model work instead of running inside the actor.
DECODE_TASK_MEMORY = 512 * 1024**2
# The encode tasks draw masks at the original size (up to max_pixels int32 labels).
ENCODE_TASK_MEMORY = 1024 * 1024**2


def prepare_inputs(job: SegmentJob) -> InputPlan:
    """Check the output and the input, and clear earlier results under ``--overwrite``; returns
    how the input is read. Items the driver holds anyway (a listing, a ``--limit``) are sharded,
    limited and checked here, once (unique ids, class lists where a config needs them), and come
    back as ``listed``; streamed manifests only have their class column checked."""
    job.check_paths()
    check_output(job.output, job.input, other_inputs=job.append or job.overwrite, other_files=job.append)
    inputs = plan_inputs(job.input)
    if inputs.listed is not None or job.limit:
        items = held_items(inputs, job.limit, job.shard)
        job.check_classes(items.select(["classes"]).to_pylist())
        inputs = InputPlan(inputs.spec, listed=items)
    else:
        job.check_manifest_classes(inputs.manifests)
    if job.overwrite:
        remove_results(job.output, job.shard)
    return inputs


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
    reclaim_signals()  # SIGTERM (ray job stop) ends the job in one line, not in Ray's abort handler
    cpus = ray.cluster_resources().get("CPU", 0)
    where = (
        f"the Ray cluster at {ray.get_runtime_context().gcs_address}" if _joined_cluster else "an embedded local Ray"
    )
    print(f"dsseg: running on {where} ({cpus:g} CPUs)", file=sys.stderr)
    return _joined_cluster


def plan_job(
    job: SegmentJob, inputs: InputPlan, config_ids: list[str]
) -> tuple[Any, Callable[[], dict[str, int]], DoneIndex | None]:
    """The TODO rows of ``job`` as a Ray Dataset (None when the driver knows nothing is left); a
    function returning the plan's counts so far (``PlanTally.totals``): exact from the start for
    items the driver holds, growing while streamed manifests are read; and the index of the rows
    already written that the plan looked them up in."""
    import ray

    index = build_done_index(job.output, config_ids, job.shard, skip_transient_errors=job.retry_errors)
    if inputs.listed is not None:
        rows, counts = plan_items(inputs.listed, config_ids, index)
        return (dataset_of_rows(rows) if len(rows) else None), lambda: counts, index
    tally = ray.remote(num_cpus=0)(PlanTally).remote()
    dataset = todo_dataset(inputs.manifests, config_ids, index, tally, job.shard)
    return dataset, lambda: ray.get(tally.totals.remote()), index


def list_todo(job: SegmentJob, address: str | None = None) -> list[dict[str, Any]]:
    """The plan of ``job`` as a list of TODO rows (each item with the config ids it lacks): for
    tests and small inputs (the job itself streams them). Applies ``--overwrite``."""
    inputs = prepare_inputs(job)
    init_ray(address)
    dataset, _, _ = plan_job(job, inputs, job.config_ids())
    if dataset is None:
        return []
    return [row for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow") for row in batch.to_pylist()]


def build_dataset(job: SegmentJob, todo, gpus: float, items: int | None = None, worker: type | None = None):
    """The Ray Data graph over the TODO rows ``todo`` (a Dataset); yields OUTPUT_SCHEMA rows, an
    image's rows in one block. ``items``: how many images are left to do, where known (small runs
    then still reach every actor). ``worker``: the model stage's callable class (default
    ``SegmentWorker``, or a subclass)."""
    import ray

    from dsseg.job.model_stage import PROBE_CLASSES, SegmentWorker

    workers = max(1, min(job.num_workers, items)) if items is not None else job.num_workers
    per_worker = -(-items // workers) if items else job.rows_per_model_call
    call_rows = max(1, min(job.rows_per_model_call, per_worker))  # under "auto", small runs still reach every actor
    # Blocks of one model call: a block is never split between tasks, so a smaller one keeps every
    # stage's output (and the rows the driver writes) a call's work behind the model.
    dataset = todo.repartition(target_num_rows_per_block=call_rows).map_batches(
        decode_batch,
        fn_kwargs={
            "preparation": job.preparation,
            "max_pixels": job.max_pixels,
            "max_side": job.max_image_side,
            "exif_transpose": job.exif_transpose,
            "needs_classes": job.needs_item_classes,
        },
        batch_size=call_rows,
        batch_format="pyarrow",
        memory=DECODE_TASK_MEMORY,
    )
    # Ray Data restarts a dead model actor and retries its batch (max_restarts and
    # max_task_retries default to -1 for actor pools), so an OOM-killed actor loses no rows.
    dataset = dataset.map_batches(
        worker or SegmentWorker,
        fn_constructor_kwargs={"job": job, "probe_classes": PROBE_CLASSES},
        compute=ray.data.ActorPoolStrategy(size=workers),
        batch_size=call_rows,
        batch_format="pyarrow",
        num_gpus=gpus,
        num_cpus=1,
    )
    # batch_size=None: each model call's rows are encoded as they come, and stay one block.
    return dataset.map_batches(
        encode_rows,
        fn_kwargs={"mask_frame": job.mask_frame},
        batch_size=None,
        batch_format="pyarrow",
        memory=ENCODE_TASK_MEMORY,
    )


class RunStats:
    """Running totals of the rows that left the model stage, kept small on the driver however
    many images run. An image's rows arrive in one block, so images are counted exactly."""

    def __init__(self) -> None:
        self.images = 0
        self.error_images = 0
        self.rows = 0
        self.ok = 0
        self.reasons: Counter[str] = Counter()
        self.stage_sums: dict[str, float] = dict.fromkeys(TIMING_STAGES, 0.0)
        self.stage_counts: dict[str, int] = dict.fromkeys(TIMING_STAGES, 0)

    def add(self, batch: pa.Table) -> None:
        """Fold in a block of OUTPUT_SCHEMA rows."""
        self.rows += len(batch)
        ids, statuses, errors, timings = (
            batch.column(name).to_pylist() for name in ("image_id", "status", "error", "timings_ms")
        )
        self.images += len(set(ids))
        self.error_images += len({image for image, status in zip(ids, statuses) if status != "ok"})
        for status, error, row_timings in zip(statuses, errors, timings):
            if status != "ok":
                self.reasons[(error or "").split(":", 1)[0]] += 1
                continue
            self.ok += 1
            for stage, ms in row_timings.items():
                if ms is not None:
                    self.stage_sums[stage] += ms
                    self.stage_counts[stage] += 1

    def summary(self, seconds: float) -> dict[str, Any]:
        """Images/s, mean per-stage milliseconds of the ok rows and errors by reason code."""
        return {
            "images_segmented": self.images,
            "rows_written": self.rows,
            "ok": self.ok,
            "error": self.rows - self.ok,
            "errors_by_reason": dict(self.reasons.most_common()),
            "images_per_second": round(self.images / seconds, 3) if seconds > 0 and self.images else None,
            "mean_stage_ms": {
                stage: round(total / self.stage_counts[stage], 1)
                for stage, total in self.stage_sums.items()
                if self.stage_counts[stage]
            },
        }


PROGRESS_SECONDS = 30.0  # how often the driver prints a progress line outside a terminal (`ray job logs`)


def run_segment_job(job: SegmentJob, address: str | None = None, worker: type | None = None) -> dict[str, Any]:
    """Run (or resume) the job; returns a summary. ``worker``: the model stage's callable class
    (default ``dsseg.job.model_stage.SegmentWorker``). A SIGINT or SIGTERM raises
    ``JobInterrupted`` once the rows held are written."""

    from dsseg.model.backbone import check_backbone_available

    start, started_at = time.perf_counter(), time.time()
    with interruptible():
        inputs = prepare_inputs(job)
        check_backbone_available(job.backbone, job.offline)
        if job.captioner:
            from dsseg.model.captioner import check_captioner_available

            check_captioner_available(job.captioner, job.offline)
        clip_models = job.clip_models
        if clip_models:
            from dsseg.model.clip import check_clip_available

            for name in clip_models:
                check_clip_available(name, job.offline)
        write_config(job.output, job.record() | {"versions": library_versions()})
        clear_success(job.output, job.shard)
        on_cluster = init_ray(address)
        gpus = gpus_per_worker(job, on_cluster)
        quiet_ray_data()
        ids = job.config_ids()
        todo, planned, index = plan_job(job, inputs, ids)
        items = planned()["todo_images"] if inputs.listed is not None else None  # exact where the driver holds them
        stats, writer = RunStats(), PartWriter(job.output, job.rows_per_file, job.flush_seconds, job.shard)
        ray_start = time.perf_counter()
        progress = ProgressLine(None, PROGRESS_SECONDS)
        drawing = threading.Lock()  # the main thread and the flush timer both draw the progress line

        def tick(final: bool = False) -> None:
            if (final or progress.due()) and drawing.acquire(blocking=final):
                try:
                    show_progress(progress, stats, planned(), items is not None, final)
                finally:
                    drawing.release()

        if todo is None:
            print(f"dsseg: nothing to do: every image × config in scope has its row in {job.output}", file=sys.stderr)
        else:
            tick()
            try:
                with filtered_stderr(), flushing_by_time(writer, on_tick=tick):
                    for batch in build_dataset(job, todo, gpus, items, worker).iter_batches(
                        batch_size=None, batch_format="pyarrow"
                    ):
                        writer.add(batch)
                        stats.add(batch)
                        tick()
                    tick(final=True)
            except Interrupted as interrupt:
                raise JobInterrupted(interrupt.signal_number, job.output, writer.rows_written) from None
        ray_seconds = time.perf_counter() - ray_start
        plan = planned()
    summary = {
        "output": job.output,
        "config_ids": ids,
        "images": plan["images"],
        "already_done": plan["images"] - plan["todo_images"],
        **stats.summary(ray_seconds),
        "part_files_written": writer.files_written,
    }
    # A run that wrote nothing left the output as the plan's index saw it (unless that index left
    # transient error rows out for --retry-errors): no second read of every part file.
    unchanged = writer.rows_written == 0 and not job.retry_errors
    summary["duplicates_removed"] = remove_repeated_rows(job.output, ids, job.shard, index if unchanged else None)
    summary["missing"] = max(0, plan["todo_pairs"] - writer.rows_written)
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


def show_progress(progress: ProgressLine, stats: RunStats, plan: dict[str, int], known: bool, final: bool) -> None:
    """Update the progress line from the plan's counts so far (``known``: complete from the
    start; else complete once ``final``): images done before this run count as done."""
    progress.set_total(plan["images"], known or final, before=plan["images"] - plan["todo_images"])
    progress.update(stats.images, stats.error_images, final=final)


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
        raise ConfigError(
            "device", f"{wanted:g} GPU(s) per worker requested but this machine's Ray has {gpus:g}; use --device cpu"
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
