"""What the explorer draws, as plain NumPy images and HTML strings (no web framework here)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from dsseg.io.frames import resize_labels
from dsseg.io.overlay import boundaries, overlay, palette

THUMBNAIL_SIDE = 320  # longest side of a gallery tile, pixels


def legend_html(entries: Sequence[Any], caption: str | None = None) -> str:
    """A table of segments (``LegendEntry``-like: segment_id, colour, name, score, area, fraction, bbox)."""
    rows = []
    for e in entries:
        swatch = f"<span style='display:inline-block;width:1em;height:1em;background:rgb{e.colour}'></span>"
        score = "" if e.score is None else f"{e.score:.3f}"
        box = ", ".join(f"{v:.0f}" for v in e.bbox)
        rows.append(
            f"<tr data-segment='{e.segment_id}'><td>{swatch}</td><td>{e.segment_id}</td>"
            f"<td>{html.escape(e.name or '')}</td><td>{e.area}</td><td>{100 * e.fraction:.1f}%</td>"
            f"<td>{score}</td><td>[{box}]</td></tr>"
        )
    head = "<tr><th></th><th>id</th><th>name</th><th>area (px)</th><th>area</th><th>score</th><th>bbox x, y, w, h</th></tr>"
    said = f"<p class='caption'>caption: {html.escape(caption)}</p>" if caption else ""
    return f"{said}<table class='legend' data-segments='{len(entries)}'>{head}{''.join(rows)}</table>"


def highlight(image: np.ndarray, labels: np.ndarray, segment_id: int) -> np.ndarray:
    """(H, W, 3) uint8: ``segment_id`` in its overlay colour, the rest dimmed, its outline white."""
    mask = labels == segment_id
    colour = palette(int(labels.max()) + 1)[segment_id].astype(np.float32)
    out = image.astype(np.float32) * 0.35
    out[mask] = 0.5 * image[mask].astype(np.float32) + 0.5 * colour
    out[boundaries(mask.astype(np.int32))] = 255.0
    return out.round().astype(np.uint8)


def fit(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` (H, W[, 3]) scaled so its longer side is at most ``side`` (nearest for label maps)."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if image.ndim == 2:
        return resize_labels(image, size[::-1])
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def thumbnail(rgb: np.ndarray | None, labels: np.ndarray | None, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """A gallery tile: the overlay at most ``side`` pixels long; the image alone without labels; a grey
    square when the image could not be read."""
    if rgb is None:
        return np.full((side // 2, side // 2, 3), 128, dtype=np.uint8)
    small = fit(rgb, side)
    if labels is None:
        return small
    return overlay(small, fit(labels, side) if labels.shape != small.shape[:2] else labels)


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 6) -> np.ndarray:
    """Two (H, W, 3) tiles in one row, white between them, the shorter padded at the bottom."""
    height = max(left.shape[0], right.shape[0])

    def padded(tile: np.ndarray) -> np.ndarray:
        return np.pad(tile, ((0, height - tile.shape[0]), (0, 0), (0, 0)), constant_values=255)

    return np.concatenate([padded(left), np.full((height, gap, 3), 255, np.uint8), padded(right)], axis=1)


def segment_at(labels: np.ndarray, segments: Sequence[dict[str, Any]], point: Sequence[int]) -> dict[str, Any] | None:
    """The segment dict (``segment_id`` keyed) under the clicked pixel ``point`` (x, y) of ``labels``;
    None for a point outside the image."""
    x, y = (int(v) for v in point)
    if not (0 <= y < labels.shape[0] and 0 <= x < labels.shape[1]):
        return None
    return next(s for s in segments if s["segment_id"] == int(labels[y, x]))


def segment_text(segment: dict[str, Any], total: int) -> str:
    """One clicked segment, as Markdown: id, name, area, bbox, score."""
    score = "–" if segment.get("score") is None else f"{segment['score']:.3f}"
    box = ", ".join(f"{v:.0f}" for v in segment["bbox"])
    return (
        f"**segment {segment['segment_id']}**: name {segment.get('label') or '–'}, area {segment['area']} px "
        f"({100 * segment['area'] / total:.1f}%), bbox [{box}] (x, y, w, h), score {score}"
    )
