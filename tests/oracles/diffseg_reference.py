"""A straightforward float64 NumPy transcription of the official DiffSeg algorithm.

Written loop by loop as the official TensorFlow code works (per-resolution aggregation,
a KL comparison per anchor, a Python greedy merge, ×8 bilinear upsampling, arg-max), with
one deliberate difference: KL is computed in float64 with log guarded at the smallest
normal float32, where the official code casts to float16 and gets NaN on peaked maps.

It is the yardstick for ``dsseg.methods.diffseg`` (tests check both give the same label
maps) and the "straightforward" side of ``dsseg benchmark --compare`` (from a source checkout).
Slow by design.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

LOG_FLOOR = float(np.finfo(np.float32).tiny)


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) float64 weights of 1-D bilinear resizing with half-pixel centres."""
    matrix = np.zeros((size_out, size_in))
    for i in range(size_out):
        src = min(max((i + 0.5) * size_in / size_out - 0.5, 0.0), size_in - 1)
        low = int(np.floor(src))
        high = min(low + 1, size_in - 1)
        frac = src - low
        matrix[i, low] += 1.0 - frac
        matrix[i, high] += frac
    return matrix


def resize_bilinear(maps: np.ndarray, size: int) -> np.ndarray:
    """(..., s, s) → (..., size, size) bilinear with half-pixel centres (TF2/Keras semantics)."""
    matrix = bilinear_matrix(maps.shape[-1], size)
    return np.einsum("ij,...jk,lk->...il", matrix, maps, matrix)


def reference_aggregate(attention: Mapping[int, np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """``attention[r]``: (heads, r², r²) or (r², r²) → (R, R, R, R) float64, R the largest r."""
    sizes = sorted(attention, reverse=True)
    target = sizes[0]
    ratios = np.array(sizes, dtype=np.float64)
    ratios = ratios / ratios.sum() if weights is None else np.asarray(weights, dtype=np.float64)
    aggregated = np.zeros((target, target, target, target))
    for size, weight in zip(sizes, ratios):
        maps = np.asarray(attention[size], dtype=np.float64)
        if maps.ndim == 3:
            maps = maps.mean(0)
        maps = maps.reshape(size * size, size, size)
        maps = resize_bilinear(maps, target).reshape(size, size, target, target)
        maps = maps / maps.sum(axis=(2, 3), keepdims=True)
        factor = target // size
        maps = np.repeat(np.repeat(maps, factor, axis=0), factor, axis=1)
        aggregated += maps * weight
    return aggregated


def sampling_grid(size: int, num_points: int) -> np.ndarray:
    """(num_points², 2) anchor (row, col) positions, the official generate_sampling_grid for a size² latent."""
    segment = (size - 1) // (num_points - 1)
    total = segment * (num_points - 1)
    start = (size - 1 - total) // 2
    axis = np.linspace(start, total + start, num_points)
    rows, cols = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([rows.reshape(-1), cols.reshape(-1)], axis=-1).astype(int)


def kl_to_all(anchor: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Symmetric KL between one map (..., s, s) and each of ``maps`` (K, s, s) → (K,)."""
    quotient = np.log(np.maximum(anchor, LOG_FLOOR)) - np.log(np.maximum(maps, LOG_FLOOR))
    return (anchor * quotient).sum(axis=(-2, -1)) / 2 - (maps * quotient).sum(axis=(-2, -1)) / 2


def reference_merge(aggregated: np.ndarray, thresholds: Sequence[float], num_points: int = 16) -> np.ndarray:
    """Iterative merging of an (R, R, R, R) aggregated attention → proposals (K, R, R)."""
    size = aggregated.shape[0]
    flat = aggregated.reshape(size * size, size, size)
    grid = sampling_grid(size, num_points)
    proposals = []
    for row, col in grid:
        matched = kl_to_all(aggregated[row, col], flat) < thresholds[0]
        proposals.append(flat[matched].mean(0))
    proposals = np.array(proposals)
    for threshold in thresholds[1:]:
        absorbed: set[int] = set()
        merged = []
        for index, anchor in enumerate(proposals):
            if index in absorbed:
                continue
            absorbed.add(index)
            matched = kl_to_all(anchor, proposals) < threshold
            absorbed.update(np.flatnonzero(matched).tolist())
            merged.append(proposals[matched].mean(0))
        proposals = np.array(merged)
    return proposals


def reference_diffseg(
    attention: Mapping[int, np.ndarray],
    kl_threshold: float | Sequence[float] = 1.1,
    iterations: int = 3,
    num_points: int = 16,
    upsample_factor: int = 8,
) -> np.ndarray:
    """Label map (8R, 8R) int64 (proposal index of the arg-max) for per-resolution attention."""
    aggregated = reference_aggregate(attention)
    thresholds = [kl_threshold] * iterations if np.isscalar(kl_threshold) else list(kl_threshold)
    proposals = reference_merge(aggregated, thresholds, num_points)
    upsampled = resize_bilinear(proposals, proposals.shape[-1] * upsample_factor)
    return upsampled.argmax(axis=0)
