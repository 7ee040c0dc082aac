"""Label maps between frames: the model-input frame and the original image (or a label's own
size), by nearest neighbour, in NumPy. The crop box and sizes come from ``dsseg.io.images.Geometry``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dsseg.io.images import Geometry


def nearest_indices(out_size: int, box_start: int, box_extent: int, src_size: int) -> np.ndarray:
    """For each of ``out_size`` output pixels, the nearest pixel of a ``src_size`` map that covers
    the output span [box_start, box_start + box_extent) (half-pixel centres, clamped at the edges)."""
    centres = (np.arange(out_size) + 0.5 - box_start) * (src_size / box_extent)
    return np.clip(np.floor(centres).astype(np.int64), 0, src_size - 1)


def original_indices(geometry: Geometry, model_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For each row and column of the original image, the model-frame row and column it takes
    its label from (nearest neighbour; outside the crop box, the nearest box pixel)."""
    top, left, box_h, box_w = geometry.box
    rows = nearest_indices(geometry.original_hw[0], top, box_h, model_hw[0])
    cols = nearest_indices(geometry.original_hw[1], left, box_w, model_hw[1])
    return rows, cols


def labels_to_original(labels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Model-frame labels (h, w) → (H, W) labels of the original image, nearest neighbour.

    Pixels outside the crop box (centre-crop geometry) take the label of the nearest box pixel.
    """
    rows, cols = original_indices(geometry, labels.shape)
    return labels[rows[:, None], cols[None, :]]


def compact_to_original(
    labels: np.ndarray, geometry: Geometry, keep: Sequence[int] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Model-frame labels (h, w) ≥ 0 → ((H, W) int32 ids 0..S−1 at the original size, the S model
    ids kept, ascending). Ids no original pixel samples (thin segments lost when shrinking) are
    dropped unless listed in ``keep``; renumbering happens on the small model-frame map, so the
    full-size map is gathered once."""
    rows, cols = original_indices(geometry, labels.shape)
    kept = np.union1d(labels[np.unique(rows)[:, None], np.unique(cols)[None, :]], np.asarray(keep, dtype=labels.dtype))
    renumber = np.zeros(max(int(labels.max()), int(kept.max())) + 1, dtype=np.int32)
    renumber[kept] = np.arange(len(kept), dtype=np.int32)
    return renumber[labels][rows[:, None], cols[None, :]], kept


def tf_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each of ``out_size`` output pixels under TF2's ``tf.image.resize(...,
    NEAREST_NEIGHBOR)`` (half-pixel centres): min(⌊(x + 0.5)·in/out⌋, in − 1), in float32 as
    TF computes it, so labels land exactly where the official DiffSeg evaluation puts them."""
    return float32_nearest_indices(in_size, out_size, offset=0.5)


def float32_nearest_indices(in_size: int, out_size: int, offset: float) -> np.ndarray:
    """min(⌊(x + offset)·in/out⌋, in − 1) for each output pixel x, in float32: nearest neighbour with
    half-pixel centres (``offset`` 0.5, TensorFlow) or corner-aligned ones (0, PyTorch's default)."""
    scale = np.float32(in_size) / np.float32(out_size)
    source = (np.arange(out_size, dtype=np.float32) + np.float32(offset)) * scale
    return np.minimum(np.floor(source).astype(np.int64), in_size - 1)


def resize_labels_tf(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) label map to ``size`` (H, W) exactly as TF2's
    ``tf.image.resize`` (see ``tf_nearest_indices``)."""
    rows = tf_nearest_indices(labels.shape[0], size[0])
    cols = tf_nearest_indices(labels.shape[1], size[1])
    return labels[rows[:, None], cols[None, :]]


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) label map to ``size`` (H, W)."""
    rows = nearest_indices(size[0], 0, size[0], labels.shape[0])
    cols = nearest_indices(size[1], 0, size[1], labels.shape[1])
    return labels[rows[:, None], cols[None, :]]


def torch_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each of ``out_size`` output pixels under PyTorch's default
    ``F.interpolate(..., mode="nearest")`` (corner-aligned, not half-pixel): min(⌊x·in/out⌋, in − 1)
    in float32 as PyTorch computes it; 1024 → 128 takes every 8th pixel from the first."""
    return float32_nearest_indices(in_size, out_size, offset=0.0)


def resize_labels_torch(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) label map to ``size`` (H, W) exactly as PyTorch's default
    ``F.interpolate`` (see ``torch_nearest_indices``), as DiffCut's ``eval_diffcut.py`` brings its
    1024² labels to 128²."""
    rows = torch_nearest_indices(labels.shape[0], size[0])
    cols = torch_nearest_indices(labels.shape[1], size[1])
    return labels[rows[:, None], cols[None, :]]
