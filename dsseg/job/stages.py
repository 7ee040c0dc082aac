"""The three stages of the segment job, as Ray Data UDFs.

1. ``decode_batch`` (CPU tasks): read bytes, decode, prepare the model input.
2. ``SegmentWorker`` (actor pool, GPU): one forward per extraction setting, every config
   segments the shared attention; labels stay in the model-input frame.
3. ``encode_and_write`` (CPU tasks): labels to the original size, COCO RLE, Parquet part files.

A bad input never stops the job: every failure becomes a row with ``status = "error"`` and a
reason that starts with a code (``empty_file:``, ``not_an_image:``, ``truncated:``,
``corrupt:``, ``too_large:``, ``read_failed:``, ``out_of_memory:``, ``model_failed:``,
``encode_failed:``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dsseg.api import to_segmentation
from dsseg.model.backbone import load_backbone
from dsseg.model.class_filters import filter_classes, load_class_filter
from dsseg.model.extract import AttentionExtractor, ExtractConfig
from dsseg.io.images import Geometry, InputError, decode_rgb, rescale_geometry, to_model_input
from dsseg.job.config import AUTO_BATCH, SegmentJob
from dsseg.job.memory import is_out_of_memory, probe_batch_size
from dsseg.methods import MethodResult, get_method, run_method
from dsseg.io.results import write_parts
from dsseg.io.schema import DECODED_SCHEMA, MODEL_SCHEMA, OUTPUT_SCHEMA, TIMING_STAGES, WRITTEN_SCHEMA
from dsseg.io.sources import read_bytes
from dsseg.timing import StageTimer

PROBE_CLASSES = 8  # candidate classes per probe image when neither the configs nor the inputs name any


def describe(error: BaseException, code: str) -> str:
    return f"{code}: {type(error).__name__}: {error}"


def decode_batch(
    batch: pa.Table, prepare: ExtractConfig, max_pixels: int | None, max_side: int | None, exif_transpose: bool = True
) -> pa.Table:
    """CPU stage: item rows (``image_id, source, offset, size, configs``) → DECODED_SCHEMA rows."""
    rows = []
    for item in batch.to_pylist():
        start = time.perf_counter()
        row: dict[str, Any] = {key: item[key] for key in ("image_id", "source", "configs", "classes")}
        try:
            try:
                data = read_bytes(item["source"], item["offset"], item["size"])
            except Exception as error:
                raise InputError("read_failed", f"{type(error).__name__}: {error}") from None
            rgb, original_hw = decode_rgb(data, max_pixels=max_pixels, max_side=max_side, exif_transpose=exif_transpose)
            row.update(height=original_hw[0], width=original_hw[1])
            pixels, geometry = prepare.prepare(rgb)
            geometry = rescale_geometry(geometry, original_hw)
            row.update(pixels=pixels.tobytes(), input_h=pixels.shape[0], input_w=pixels.shape[1], box=list(geometry.box))
        except InputError as error:
            row["error"] = str(error)
        except Exception as error:  # anything else about one input is that input's error row
            row["error"] = describe(error, "corrupt")
        row["decode_ms"] = (time.perf_counter() - start) * 1000.0
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


class SegmentWorker:
    """Model actor: loads the backbone once, then segments batches of decoded rows for every config.

    A failing batch is split in half and retried (after freeing cached GPU memory when it ran
    out of memory), down to single images, which then become error rows.
    """

    def __init__(self, job: SegmentJob, probe_classes: int = PROBE_CLASSES) -> None:
        backbone = load_backbone(job.backbone, device=job.device, dtype=job.dtype, offline=job.offline, compile=job.compile)
        if backbone.device.type == "cpu":
            # Ray limits an actor to its num_cpus threads; a CPU model actor may use the node's cores.
            torch.set_num_threads(os.cpu_count() or 1)
        self.backbone = backbone
        self.config_ids = job.config_ids()
        self.methods = [(get_method(spec.method), spec.configs()[1]) for spec in job.configs]
        self.groups = [(AttentionExtractor(backbone, extract), indices) for extract, indices in job.extraction_groups()]
        self.class_filter = load_class_filter(job.class_filter, device=str(backbone.device), offline=job.offline) if job.class_filter else None
        self.crash_once_marker = job.crash_once_marker
        self.batch_limit = job.rows_per_model_call
        if job.batch_size == AUTO_BATCH:
            self.batch_limit = self._probe_batch_size(job, probe_classes)

    def _probe_batch_size(self, job: SegmentJob, probe_classes: int) -> int:
        """``--batch-size auto``: the batch this actor's share of free memory holds, from probe
        batches of a grey image at the largest model input (``image_size``²) with ``probe_classes``
        candidate classes (the longest class list of the job's inputs) where configs take classes."""
        side = job.prepare_config().image_size
        configured = max((len(e.config.classes) for e, _ in self.groups), default=0)
        uses_classes = any(e.config.uses_classes for e, _ in self.groups)
        names = [f"thing {i}" for i in range(max(probe_classes, configured))] if uses_classes else None
        row = {
            "image_id": "probe", "source": "", "width": side, "height": side, "configs": list(self.config_ids),
            "classes": names, "input_h": side, "input_w": side,
            "pixels": np.full((side, side, 3), 128, np.uint8).tobytes(), "box": [0, 0, side, side], "decode_ms": 0.0, "error": None,
        }  # fmt: skip
        cuda = self.backbone.device.type == "cuda"
        share = min(job.gpus_per_worker or 1.0, 1.0) if cuda else 1.0 / job.num_workers
        probe = probe_batch_size(lambda n: self._segment_rows([row] * n), self.backbone.device, share)
        print(f"dsseg: --batch-size auto → {json.dumps(probe)}", file=sys.stderr)
        return probe["batch_size"]

    def __call__(self, batch: pa.Table) -> pa.Table:
        self._maybe_crash()
        out: list[dict] = []
        by_size: dict[tuple[int, int], list[dict]] = {}
        for row in batch.to_pylist():
            if row["error"] is not None:
                out.extend(self._error_rows(row, row["error"]))
            else:
                by_size.setdefault((row["input_h"], row["input_w"]), []).append(row)
        for rows in by_size.values():
            for start in range(0, len(rows), self.batch_limit):
                out.extend(self._segment_bisecting(rows[start : start + self.batch_limit]))
        return pa.Table.from_pylist(out, schema=MODEL_SCHEMA)

    def _maybe_crash(self) -> None:
        marker = self.crash_once_marker
        if marker and not os.path.exists(marker):
            Path(marker).touch()
            os._exit(1)  # die like an OOM-killed process: no exception, no cleanup

    def _segment_bisecting(self, rows: list[dict]) -> list[dict]:
        try:
            return self._segment_rows(rows)
        except Exception as error:
            out_of_memory = is_out_of_memory(error)
            reason = describe(error, "out_of_memory" if out_of_memory else "model_failed")
        # Retried outside the handler: the exception's traceback holds the failed attempt's tensors,
        # which must be released before the halves run.
        if out_of_memory and self.backbone.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(rows) == 1:
            return self._error_rows(rows[0], reason)
        half = len(rows) // 2
        return self._segment_bisecting(rows[:half]) + self._segment_bisecting(rows[half:])

    def _segment_rows(self, rows: list[dict]) -> list[dict]:
        """Same-size rows → one MODEL_SCHEMA row per row × wanted config."""
        device = self.backbone.device
        shape = (rows[0]["input_h"], rows[0]["input_w"], 3)
        pixels = np.stack([np.frombuffer(r["pixels"], dtype=np.uint8).reshape(shape) for r in rows])
        model_input = to_model_input(pixels, device, self.backbone.dtype)
        shared = StageTimer(device)
        results: dict[int, tuple[list[MethodResult], dict[str, float]]] = {}
        for extractor, indices in self.groups:
            wanted = [i for i in indices if any(self.config_ids[i] in row["configs"] for row in rows)]
            if not wanted:
                continue
            classes = [row["classes"] for row in rows]
            if extractor.config.uses_classes and self.class_filter is not None:
                classes = filter_classes(self.class_filter, list(pixels), classes, extractor.config.classes)
            bundle = extractor(model_input, shared, classes)
            for i in wanted:
                method, config = self.methods[i]
                timer = StageTimer(device)
                results[i] = (run_method(method, bundle, config, timer), timer.ms)
            del bundle
        out = []
        for k, row in enumerate(rows):
            for i, (method_results, method_ms) in results.items():
                if self.config_ids[i] not in row["configs"]:
                    continue
                result = method_results[k]
                timings = {**shared.ms, **method_ms}
                timings = {stage: ms / len(rows) for stage, ms in timings.items()} | {"decode": row["decode_ms"]}
                out.append(
                    self._row(row, i, "ok", None, timings)
                    | {
                        "labels": result.labels.to(torch.int32).cpu().numpy().tobytes(),
                        "input_h": result.labels.shape[0],
                        "input_w": result.labels.shape[1],
                        "box": row["box"],
                        "names": result.names,
                        "scores": result.scores,
                        "parents": result.parents,
                        "background": result.background,
                    }
                )
        return out

    def _error_rows(self, row: dict, reason: str) -> list[dict]:
        wanted = [i for i, cid in enumerate(self.config_ids) if cid in row["configs"]]
        return [self._row(row, i, "error", reason, {"decode": row["decode_ms"]}) for i in wanted]

    def _row(self, row: dict, index: int, status: str, error: str | None, timings: dict[str, float]) -> dict:
        return {
            "image_id": row["image_id"],
            "source": row["source"],
            "width": row["width"],
            "height": row["height"],
            "method": self.methods[index][0].name,
            "config_id": self.config_ids[index],
            "status": status,
            "error": error,
            "timings_ms": {stage: timings.get(stage) for stage in TIMING_STAGES},
        }


def encode_and_write(batch: pa.Table, output: str, mask_frame: str = "original") -> pa.Table:
    """CPU stage: MODEL_SCHEMA rows → labels in ``mask_frame`` → COCO RLE rows → Parquet part
    files under ``output``. Returns one WRITTEN_SCHEMA row per row written (progress, summary)."""
    table = pa.Table.from_pylist([encode_row(row, mask_frame) for row in batch.to_pylist()], schema=OUTPUT_SCHEMA)
    if len(table):
        write_parts(table, output)
    return table.select(WRITTEN_SCHEMA.names).cast(WRITTEN_SCHEMA)


def encode_row(row: dict, mask_frame: str = "original") -> dict:
    """One MODEL_SCHEMA row → one OUTPUT_SCHEMA row: segments as RLE at the original size, or
    (``mask_frame="model"``) in the model-input frame, ids compacted either way."""
    out = {name: row[name] for name in OUTPUT_SCHEMA.names if name in row}
    out["segments"] = []
    if row["status"] != "ok":
        return out
    timer = StageTimer()
    try:
        shape = (row["input_h"], row["input_w"])
        labels = torch.from_numpy(np.frombuffer(row["labels"], dtype=np.int32).reshape(shape).copy())
        if mask_frame == "model":
            geometry = Geometry(shape, (0, 0, *shape), shape)  # identity: the model frame itself
        else:
            geometry = Geometry((row["height"], row["width"]), tuple(row["box"]), shape)
        result = MethodResult(labels, names=row["names"], scores=row["scores"], parents=row["parents"], background=bool(row["background"]))
        segmentation = to_segmentation(result, geometry, row["method"], timer)
        with timer.stage("rle"):
            out["segments"] = segmentation.to_rles()
    except Exception as error:
        out.update(status="error", error=describe(error, "encode_failed"), segments=[])
    out["timings_ms"] = {**row["timings_ms"], **timer.ms}
    return out
