"""Planted-partition self-attention: regions that attend to themselves, with known ground truth.

The input of the parameter studies (``dsseg manc-study``, ``jobs/manc_study.py``); the tests of the
methods use it too. It is benchmark input, not a method: it lives beside the studies that read it."""

from __future__ import annotations

import numpy as np


def planted_regions(size: int = 64) -> np.ndarray:
    """(size, size) int64 map of 5 regions: four quadrant-ish blocks and a central disc."""
    rows, cols = np.mgrid[0:size, 0:size] / size
    regions = (rows >= 0.45).astype(np.int64) * 2 + (cols >= 0.6)
    regions[(rows - 0.5) ** 2 + (cols - 0.45) ** 2 < 0.04] = 4
    return regions


def pixel_regions(regions: np.ndarray, factor: int = 8) -> np.ndarray:
    """A latent-grid region map repeated to pixels: (h, w) → (factor·h, factor·w)."""
    return np.repeat(np.repeat(regions, factor, 0), factor, 1)


def downsample_regions(regions: np.ndarray, size: int) -> np.ndarray:
    """Nearest (cell-centre) downsampling of a region map to (size, size)."""
    step = regions.shape[0] // size
    return regions[step // 2 :: step, step // 2 :: step][:size, :size]


def planted_attention(
    regions: np.ndarray,
    resolutions=(64, 32, 16, 8),
    heads: int = 2,
    affinity: float = 8.0,
    locality: float = 0.15,
    noise: float = 0.3,
    seed: int = 0,
    groups: np.ndarray | None = None,
    group_affinity: float = 0.0,
) -> dict[int, np.ndarray]:
    """``{r: (heads, r², r²) float32}`` whose rows sum to 1.

    Logits: ``affinity`` for query/key pairs in the same region, plus ``group_affinity`` for pairs
    whose regions share a group (``groups[region]``: a nested, coarser partition), minus squared
    distance / (2·locality²) (distances in units of the image side), plus Gaussian noise of std
    ``noise``.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for r in resolutions:
        labels = downsample_regions(regions, r).reshape(-1)
        coords = (np.stack(np.mgrid[0:r, 0:r], -1).reshape(-1, 2) + 0.5) / r
        dist2 = (coords[:, None, 0] - coords[None, :, 0]) ** 2 + (coords[:, None, 1] - coords[None, :, 1]) ** 2
        logits = affinity * (labels[:, None] == labels[None, :]) - dist2 / (2 * locality**2)
        if groups is not None:
            logits = logits + group_affinity * (groups[labels][:, None] == groups[labels][None, :])
        maps = np.empty((heads, *logits.shape), dtype=np.float32)
        for index in range(heads):  # in place, float64: the same numbers as the expressions written out
            head = rng.standard_normal(logits.shape)
            head *= noise
            head += logits
            head -= head.max(-1, keepdims=True)
            np.exp(head, out=head)
            head /= head.sum(-1, keepdims=True)
            maps[index] = head
        out[r] = maps
    return out


def voronoi_regions(size: int, count: int, seed: int = 0) -> np.ndarray:
    """(size, size) int64 map of ``count`` Voronoi cells around seeded random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.1, 0.9, size=(count, 2))
    coords = (np.stack(np.mgrid[0:size, 0:size], -1) + 0.5) / size
    return ((coords[:, :, None, :] - centres) ** 2).sum(-1).argmin(-1)
