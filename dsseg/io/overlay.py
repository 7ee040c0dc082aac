"""Coloured overlays of label maps, for quick looks and reports."""

from __future__ import annotations

import colorsys

import numpy as np


def palette(count: int) -> np.ndarray:
    """(count, 3) uint8 distinct colours: hues spaced by the golden ratio, fixed order."""
    hues = (np.arange(count) * 0.618033988749895) % 1.0
    rgb = np.array([colorsys.hsv_to_rgb(h, 0.75, 0.95) for h in hues]).reshape(count, 3)
    return (rgb * 255).round().astype(np.uint8)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image blended with segment colours, boundaries drawn white."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    colours = palette(int(labels.max()) + 1)[labels]
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    blended[boundaries(labels)] = 255.0
    return blended.round().astype(np.uint8)
