"""One image's segmentation at its original size, and how a model-frame label map becomes one.

NumPy only (no model code), so the job's write stage and readers of results load it cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dsseg.io.frames import compact_to_original
from dsseg.io.images import Geometry
from dsseg.io.masks import encode_labels
from dsseg.timing import StageTimer


@dataclass(frozen=True)
class Segmentation:
    """One image's segmentation.

    ``labels``: (H, W) int32 segment ids 0..S−1 at the image's original size; segments
    partition the image. ``names``/``scores``/``parents``: per-segment label, score and parent
    id where the method provides them. ``timings_ms``: per-stage wall time (ms) of the batch.
    ``caption``: what the captioner wrote for the image, when the config read captions.
    """

    labels: np.ndarray
    method: str
    names: list[str | None] | None = None
    scores: list[float | None] | None = None
    parents: list[int | None] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    caption: str | None = None

    @property
    def num_segments(self) -> int:
        return int(self.labels.max()) + 1

    def to_rles(self) -> list[dict]:
        """Segments as COCO compressed RLE dicts (see ``dsseg.io.masks.encode_labels``) with their
        ``label``, ``score`` and ``parent`` (None where the method gives none)."""
        segments = encode_labels(self.labels)
        for segment in segments:
            sid = segment["segment_id"]
            segment["label"] = self.names[sid] if self.names else None
            segment["score"] = self.scores[sid] if self.scores else None
            segment["parent"] = self.parents[sid] if self.parents else None
        return segments


def segmentation_from_labels(
    labels: np.ndarray,
    geometry: Geometry,
    method: str,
    timer: StageTimer,
    names: Sequence[str | None] | None = None,
    scores: Sequence[float | None] | None = None,
    parents: Sequence[int | None] | None = None,
    background: bool = False,
) -> Segmentation:
    """Model-frame labels (h, w) ≥ 0 with per-segment fields → ``Segmentation`` in ``geometry``'s
    original frame, ids compacted (segments too thin to survive the resize are dropped, except the
    background segment 0 when ``background``) and the per-segment fields remapped."""
    with timer.stage("upsample"):
        labels, kept = compact_to_original(labels, geometry, keep=(0,) if background else ())

    def pick(values: Sequence | None) -> list | None:
        return None if values is None else [values[i] for i in kept]

    return Segmentation(labels, method, pick(names), pick(scores), pick(parents), timer.ms)
