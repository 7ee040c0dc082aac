"""Stage 2 of the segment job (the actor pool, GPU): a thin Arrow adapter around ``Segmenter``.

The actor loads the backbone once; each call turns decoded rows into one MODEL_SCHEMA row per
row × config still missing for it, labels in the model-input frame. A failing batch is split in
half and retried (after freeing cached GPU memory when it ran out of memory), down to single
images, which then become error rows (``out_of_memory:``, ``model_failed:``).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pyarrow as pa
import torch

from dsseg.io.images import Geometry
from dsseg.io.schema import MODEL_SCHEMA, TIMING_STAGES, row_identity
from dsseg.job.config import AUTO_BATCH, SegmentJob
from dsseg.job.decode import describe
from dsseg.job.memory import is_out_of_memory, probe_batch_size
from dsseg.model.backbone import load_backbone
from dsseg.model.captioner import load_captioner
from dsseg.model.class_filters import load_class_filter
from dsseg.model.clip import load_clip
from dsseg.segmenter import Batch, Segmenter
from dsseg.timing import StageTimer

PROBE_CLASSES = 8  # candidate classes per probe image when neither the configs nor the inputs name any


class SegmentWorker:
    """Ray Data callable class: ``__init__`` loads the model, ``__call__`` segments a batch of
    DECODED_SCHEMA rows into MODEL_SCHEMA rows."""

    def __init__(self, job: SegmentJob, probe_classes: int = PROBE_CLASSES) -> None:
        backbone = load_backbone(
            job.backbone,
            device=job.device,
            dtype=job.dtype,
            offline=job.offline,
            compile=job.compile,
            methods=[spec.method for spec in job.configs],
        )
        if backbone.device.type == "cpu":
            # Ray limits an actor to its num_cpus threads; a CPU model actor may use the node's cores.
            torch.set_num_threads(os.cpu_count() or 1)
        class_filter = (
            load_class_filter(job.class_filter, device=str(backbone.device), offline=job.offline)
            if job.class_filter
            else None
        )
        captioner = (
            load_captioner(job.captioner, device=backbone.device, dtype=backbone.dtype, offline=job.offline)
            if job.captioner
            else None
        )
        clips = {name: load_clip(name, device=backbone.device, offline=job.offline) for name in job.clip_models}
        self.segmenter = Segmenter(backbone, job.configs, class_filter=class_filter, captioner=captioner, clips=clips)
        self.config_ids = job.config_ids()
        self.batch_limit = job.rows_per_model_call
        if job.batch_size == AUTO_BATCH:
            self.batch_limit = self._probe_batch_size(job, probe_classes)

    @property
    def device(self) -> torch.device:
        return self.segmenter.backbone.device

    def _probe_batch_size(self, job: SegmentJob, probe_classes: int) -> int:
        """``batch_size="auto"``: the batch this actor's share of free memory holds, from probe
        batches of a grey image at the largest model input (``image_size``²) with ``probe_classes``
        candidate classes (the longest class list of the job's inputs) where configs take classes."""
        side = self.segmenter.preparation.image_size
        promptings = [group.extractor.config.prompting for group in self.segmenter.groups]
        configured = max((len(p.classes) for p in promptings), default=0)
        names = (
            [f"thing {i}" for i in range(max(probe_classes, configured))]
            if any(p.uses_classes for p in promptings) or job.clip_models
            else None
        )
        row = {
            "image_id": "probe", "source": "", "width": side, "height": side, "configs": list(self.config_ids),
            "classes": names, "input_h": side, "input_w": side,
            "pixels": np.full((side, side, 3), 128, np.uint8).tobytes(), "box": [0, 0, side, side], "decode_ms": 0.0, "error": None,
        }  # fmt: skip
        share = min(job.gpus_per_worker or 1.0, 1.0) if self.device.type == "cuda" else 1.0 / job.num_workers
        # A filter that looks images up (candidates:FILE) knows no probe image: probe with the names above.
        looks_up = getattr(self.segmenter.class_filter, "needs_keys", False)
        saved, self.segmenter.class_filter = (
            self.segmenter.class_filter,
            None if looks_up else self.segmenter.class_filter,
        )
        try:
            probe = probe_batch_size(lambda n: self._segment_rows([row] * n), self.device, share)
        finally:
            self.segmenter.class_filter = saved
        print(f"dsseg: batch_size auto → {json.dumps(probe)}", file=sys.stderr)
        return probe["batch_size"]

    def __call__(self, batch: pa.Table) -> pa.Table:
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

    def _segment_bisecting(self, rows: list[dict]) -> list[dict]:
        try:
            return self._segment_rows(rows)
        except Exception as error:
            out_of_memory = is_out_of_memory(error)
            reason = describe(error, "out_of_memory" if out_of_memory else "model_failed")
        # Retried outside the handler: the exception's traceback holds the failed attempt's tensors,
        # which must be released before the halves run.
        if out_of_memory and self.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(rows) == 1:
            return self._error_rows(rows[0], reason)
        half = len(rows) // 2
        return self._segment_bisecting(rows[:half]) + self._segment_bisecting(rows[half:])

    def _segment_rows(self, rows: list[dict]) -> list[dict]:
        """Same-size rows → one MODEL_SCHEMA row per row × config it still needs."""
        shape = (rows[0]["input_h"], rows[0]["input_w"], 3)
        batch = Batch(
            pixels=np.stack([np.frombuffer(r["pixels"], dtype=np.uint8).reshape(shape) for r in rows]),
            geometries=[Geometry((r["height"], r["width"]), tuple(r["box"]), shape[:2]) for r in rows],
            classes=[row["classes"] for row in rows],
            keys=[(row["image_id"], row["source"]) for row in rows],
        )
        wanted = {i for i, cid in enumerate(self.config_ids) if any(cid in row["configs"] for row in rows)}
        outputs = self.segmenter.segment(batch, wanted=wanted, timer=StageTimer(self.device), frame="model")
        out = []
        for k, row in enumerate(rows):
            for i, per_image in enumerate(outputs):
                if not per_image or self.config_ids[i] not in row["configs"]:
                    continue
                result = per_image[k].result
                timings = {stage: ms / len(rows) for stage, ms in per_image[k].timings_ms.items()} | {
                    "decode": row["decode_ms"]
                }
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
                        "caption": per_image[k].caption,
                    }
                )
        return out

    def _error_rows(self, row: dict, reason: str) -> list[dict]:
        wanted = [i for i, cid in enumerate(self.config_ids) if cid in row["configs"]]
        return [self._row(row, i, "error", reason, {"decode": row["decode_ms"]}) for i in wanted]

    def _row(self, row: dict, index: int, status: str, error: str | None, timings: dict[str, float]) -> dict:
        method = self.segmenter.configs[index].method
        identity = row_identity(row, method, self.config_ids[index], status, error)
        return identity | {"timings_ms": {stage: timings.get(stage) for stage in TIMING_STAGES}}
