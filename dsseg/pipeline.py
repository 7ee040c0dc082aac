"""The Ray Data graph of the segment job: list → decode (CPU tasks) → segment (actor pool) → Parquet.

A bad input never stops the job: decoding failures and per-image model failures become rows
with ``status = "error"`` and a reason, and the other images go on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dsseg.api import Segmenter, split_params
from dsseg.backbone import DEFAULT_BACKBONE, check_backbone_available, load_backbone
from dsseg.extract import ExtractConfig
from dsseg.image import Geometry, decode_image
from dsseg.schema import DECODED_SCHEMA, OUTPUT_SCHEMA, TIMING_STAGES
from dsseg.timing import StageTimer

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
SEGMENTS_DIR = "segments"
# Memory reserved per decode task. Besides guarding against over-subscription, a resource
# shape unlike the model actors' keeps Ray from fusing decoding into the actors, so CPU
# decoding overlaps with model work instead of running inside the actor.
DECODE_TASK_MEMORY = 512 * 1024**2
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class SegmentJob:
    """Everything a segment run needs; validated at construction.

    ``params``: extraction and method parameters (see ``dsseg.api.split_params``).
    ``gpus_per_worker``: None → 1 when the cluster has GPUs and ``device`` allows, else 0;
    fractions share a GPU between workers.
    """

    input: str
    output: str
    backbone: str = DEFAULT_BACKBONE
    method: str = "diffseg"
    params: Mapping[str, Any] = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "auto"
    offline: bool = False
    batch_size: int = 4
    num_workers: int = 1
    gpus_per_worker: float | None = None
    limit: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not Path(self.input).exists():
            raise ValueError(f"--input {self.input!r} does not exist; give an image file or a folder of images")
        if self.batch_size < 1 or self.num_workers < 1:
            raise ValueError(f"batch size and worker count must be ≥ 1; got {self.batch_size} and {self.num_workers}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be ≥ 1; got {self.limit}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda; got {self.device!r}")
        if self.gpus_per_worker is not None and not 0 <= self.gpus_per_worker <= 8:
            raise ValueError(f"gpus per worker must be in [0, 8]; got {self.gpus_per_worker}")
        object.__setattr__(self, "params", dict(self.params))
        self.configs()  # validates method name and parameters

    def configs(self) -> tuple[ExtractConfig, Any]:
        return split_params(self.method, self.params)

    def config_id(self) -> str:
        """Hash of what determines the output: backbone, extraction and method config."""
        extract, method_config = self.configs()
        key = {
            "backbone": self.backbone,
            "dtype": self.dtype,
            "extract": dataclasses.asdict(extract),
            "method": self.method,
            "params": dataclasses.asdict(method_config),
        }
        return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def list_images(root: str, limit: int | None = None) -> list[dict[str, str]]:
    """``[{"image_id", "source"}]`` for an image file or every image under a folder (recursive).

    ``image_id`` is the path relative to the folder (POSIX separators); order is sorted, so runs
    are deterministic.
    """
    path = Path(root)
    if path.is_file():
        items = [{"image_id": path.name, "source": str(path.resolve())}]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        items = [{"image_id": p.relative_to(path).as_posix(), "source": str(p.resolve())} for p in files]
    if not items:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {root!r}")
    return items[:limit] if limit else items


def decode_batch(batch: dict[str, np.ndarray], extract: ExtractConfig) -> pa.Table:
    """CPU stage: read, decode and prepare each image; failures become rows with ``error`` set."""
    rows = []
    for image_id, source in zip(batch["image_id"], batch["source"]):
        start = time.perf_counter()
        row: dict[str, Any] = {"image_id": str(image_id), "source": str(source)}
        try:
            with open(source, "rb") as handle:
                rgb = np.asarray(decode_image(handle.read()))
            row.update(height=rgb.shape[0], width=rgb.shape[1])
            pixels, geometry = extract.prepare(rgb)
            row.update(pixels=pixels.tobytes(), input_h=pixels.shape[0], input_w=pixels.shape[1], box=list(geometry.box))
        except Exception as error:  # any failure of one input is that input's error row
            row["error"] = f"{type(error).__name__}: {error}"
        row["decode_ms"] = (time.perf_counter() - start) * 1000.0
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


class SegmentWorker:
    """GPU (or CPU) actor: loads the backbone once, then segments batches of decoded rows."""

    def __init__(self, job: SegmentJob, config_id: str) -> None:
        self.job = job
        self.config_id = config_id
        backbone = load_backbone(job.backbone, device=job.device, dtype=job.dtype, offline=job.offline)
        if backbone.device.type == "cpu":
            # Ray limits an actor to its num_cpus threads; a CPU model actor may use the node's cores.
            torch.set_num_threads(os.cpu_count() or 1)
        self.segmenter = Segmenter(backbone, job.method, job.params)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out: dict[int, dict] = {}
        pending: dict[tuple[int, int], list[int]] = {}
        for index, row in enumerate(rows):
            if row["error"] is not None:
                out[index] = self._error_row(row, row["error"])
            else:
                pending.setdefault((row["input_h"], row["input_w"]), []).append(index)
        for group in pending.values():
            out.update(self._segment_group([rows[i] for i in group], group))
        return pa.Table.from_pylist([out[i] for i in range(len(rows))], schema=OUTPUT_SCHEMA)

    def _segment_group(self, rows: list[dict], indices: list[int]) -> dict[int, dict]:
        """Segment same-size rows together; if the batch fails, retry image by image."""
        try:
            return dict(zip(indices, self._segment_rows(rows)))
        except Exception as error:
            if len(rows) == 1:
                return {indices[0]: self._error_row(rows[0], f"{type(error).__name__}: {error}")}
            results = {}
            for index, row in zip(indices, rows):
                results.update(self._segment_group([row], [index]))
            return results

    def _segment_rows(self, rows: list[dict]) -> list[dict]:
        timer = StageTimer(self.segmenter.backbone.device)
        shape = (rows[0]["input_h"], rows[0]["input_w"], 3)
        pixels = np.stack([np.frombuffer(r["pixels"], dtype=np.uint8).reshape(shape) for r in rows])
        geometries = [Geometry((r["height"], r["width"]), tuple(r["box"]), shape[:2]) for r in rows]
        segmentations = self.segmenter(pixels, geometries, timer)
        per_image = {stage: ms / len(rows) for stage, ms in timer.ms.items()}
        out = []
        for row, segmentation in zip(rows, segmentations):
            rle_timer = StageTimer()
            with rle_timer.stage("rle"):
                segments = segmentation.to_rles()
            timings = {**per_image, **rle_timer.ms, "decode": row["decode_ms"]}
            out.append(self._row(row, "ok", None, segments, timings))
        return out

    def _error_row(self, row: dict, reason: str) -> dict:
        return self._row(row, "error", reason, [], {"decode": row.get("decode_ms")})

    def _row(self, row: dict, status: str, error: str | None, segments: list[dict], timings: dict) -> dict:
        return {
            "image_id": row["image_id"],
            "source": row["source"],
            "width": row.get("width"),
            "height": row.get("height"),
            "method": self.job.method,
            "config_id": self.config_id,
            "status": status,
            "error": error,
            "segments": segments,
            "timings_ms": {stage: timings.get(stage) for stage in TIMING_STAGES},
        }


def init_ray(address: str | None = None) -> bool:
    """Connect to ``address`` (or ``$RAY_ADDRESS``, as under ``ray job submit``), else start an
    embedded local Ray with room for the read tasks beside the actor pool. Returns True when
    connected to an existing cluster (which may autoscale)."""
    import ray

    if address or os.environ.get("RAY_ADDRESS"):
        if not ray.is_initialized():
            ray.init(address=address)
        return True
    if not ray.is_initialized():
        # Logical CPUs above the physical count keep read tasks running beside a CPU actor
        # (an actor pool that takes every CPU starves the read tasks and hangs).
        ray.init(num_cpus=(os.cpu_count() or 1) + 2, include_dashboard=False)
    return False


def run_segment_job(job: SegmentJob, address: str | None = None) -> dict[str, Any]:
    """Run the job on Ray; returns a summary (rows, ok, error, seconds, output paths)."""
    import ray

    start = time.perf_counter()
    output = Path(job.output)
    segments_dir = output / SEGMENTS_DIR
    if segments_dir.exists() and any(segments_dir.iterdir()):
        if not job.overwrite:
            raise FileExistsError(f"{segments_dir} already holds results; pass --overwrite to replace them or choose another --output")
        shutil.rmtree(segments_dir)
    items = list_images(job.input, job.limit)
    check_backbone_available(job.backbone, job.offline)
    on_cluster = init_ray(address)
    extract, _ = job.configs()
    gpus = _gpus_per_worker(job)
    if gpus and not on_cluster and ray.cluster_resources().get("GPU", 0) < gpus:
        raise RuntimeError(f"{gpus} GPU(s) per worker requested but this machine's Ray has none; use --device cpu")
    config_id = job.config_id()
    workers = min(job.num_workers, len(items))
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * workers)))
    dataset = dataset.map_batches(
        decode_batch, fn_kwargs={"extract": extract}, batch_size=job.batch_size, batch_format="numpy", memory=DECODE_TASK_MEMORY
    )
    dataset = dataset.map_batches(
        SegmentWorker,
        fn_constructor_kwargs={"job": job, "config_id": config_id},
        compute=ray.data.ActorPoolStrategy(size=workers),
        batch_size=job.batch_size,
        batch_format="pyarrow",
        num_gpus=gpus,
        num_cpus=1,
    )
    output.mkdir(parents=True, exist_ok=True)
    dataset.write_parquet(str(segments_dir))
    _write_config(output / CONFIG_FILE, job, config_id)
    statuses = pq.read_table(str(segments_dir), columns=["status"]).column("status").to_pylist()
    return {
        "output": str(output),
        "config_id": config_id,
        "rows": len(statuses),
        "ok": statuses.count("ok"),
        "error": statuses.count("error"),
        "seconds": round(time.perf_counter() - start, 2),
    }


def _gpus_per_worker(job: SegmentJob) -> float:
    """GPUs per model actor: as given; else 0 for ``--device cpu``, 1 for ``--device cuda``
    (also on an autoscaling cluster whose GPU nodes are not up yet), and for ``auto`` 1 when
    the cluster has GPUs now."""
    import ray

    if job.gpus_per_worker is not None:
        return job.gpus_per_worker
    if job.device == "cpu":
        return 0.0
    if job.device == "cuda":
        return 1.0
    if ray.cluster_resources().get("GPU", 0) > 0:
        return 1.0
    print("dsseg: no GPUs in the Ray cluster, running the model on CPU (on an autoscaling cluster pass --device cuda)", file=sys.stderr)
    return 0.0


def library_versions() -> dict[str, str]:
    """Installed versions of dsseg and the libraries that shape its results."""
    versions = {}
    for name in ("dsseg", "torch", "diffusers", "transformers", "ray", "numpy", "pycocotools"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _write_config(path: Path, job: SegmentJob, config_id: str) -> None:
    extract, method_config = job.configs()
    record = {
        "config_id": config_id,
        "backbone": job.backbone,
        "method": job.method,
        "method_config": dataclasses.asdict(method_config),
        "extract_config": dataclasses.asdict(extract),
        "job": dataclasses.asdict(job),
        "versions": library_versions(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)
