"""Label maps ⇄ COCO compressed RLE segments.

A segment is a dict ``{"segment_id", "rle": {"size": [h, w], "counts": str}, "area", "bbox"}``
with ``bbox`` = [x, y, w, h] in pixels. RLE is COCO's column-major run-length encoding,
compressed to a string; ``pycocotools.mask.decode`` reads it after ``counts.encode()``.

Encoding finds the runs of the column-major label sequence once (O(H·W) in NumPy) and builds
every segment's run lengths from them, instead of scanning one binary mask per segment.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def label_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal values in column-major order: (starts, lengths, values), each (R,)."""
    flat = np.asarray(labels).ravel(order="F")
    if flat.size == 0:
        raise ValueError("empty label map")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.concatenate((starts, [flat.size])))
    return starts, lengths, flat[starts]


def segment_counts(starts: np.ndarray, lengths: np.ndarray, total: int) -> list[int]:
    """Uncompressed COCO counts (alternating 0-runs and 1-runs, starting with 0s) of one
    segment's runs, given their column-major starts and lengths (ascending). As pycocotools
    writes them: no trailing run of 0s when the segment reaches the last pixel."""
    ends = starts + lengths
    gaps = starts - np.concatenate(([0], ends[:-1]))
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
    counts[0:-1:2] = gaps
    counts[1::2] = lengths
    counts[-1] = total - ends[-1]
    return counts[:-1].tolist() if counts[-1] == 0 else counts.tolist()


def encode_labels(labels: np.ndarray) -> list[dict]:
    """(H, W) integer label map → one segment dict per distinct label, ordered by label.

    Segments partition the image: their areas sum to H·W.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D; got shape {labels.shape}")
    height, width = labels.shape
    starts, lengths, values = label_runs(labels)
    order = np.argsort(values, kind="stable")
    ids, first = np.unique(values[order], return_index=True)
    bounds = np.append(first, len(order))
    uncompressed = [
        {"size": [height, width], "counts": segment_counts(starts[order[a:b]], lengths[order[a:b]], height * width)}
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    rles = mask_utils.frPyObjects(uncompressed, height, width)
    boxes = mask_utils.toBbox(rles)
    # Areas from the runs, not mask_utils.area: pycocotools 2.0.11 overflows a uint8 there from 256 masks on.
    areas = np.add.reduceat(lengths[order], first) if len(order) else []
    return [
        {
            "segment_id": int(segment_id),
            "rle": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
            "area": int(area),
            "bbox": [float(v) for v in box],
        }
        for segment_id, rle, area, box in zip(ids, rles, areas, boxes)
    ]


def rle_to_mask(rle: dict) -> np.ndarray:
    """A segment's ``rle`` dict (string or bytes counts) → (H, W) bool mask."""
    counts = rle["counts"]
    size = [int(side) for side in rle["size"]]  # a list, or a NumPy array in rows read with pandas
    coco = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(coco).astype(bool)


def decode_segments(segments: Sequence[dict] | None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Segment dicts → (H, W) int32 label map of their ``segment_id``s. ``segments``: a row's
    ``segments`` as pyarrow's ``to_pylist`` gives it (a list) or as pandas does (a NumPy object
    array of dicts, sizes as arrays).

    Raises ``ValueError`` unless the segments partition the image (every pixel in exactly one).
    """
    segments = [] if segments is None else list(segments)
    if not segments:
        raise ValueError("no segments to decode: an error row has none (its status is 'error' and its error says why)")
    size = tuple(int(side) for side in (size if size is not None else segments[0]["rle"]["size"]))
    labels = np.full(size, -1, dtype=np.int32)
    covered = np.zeros(size, dtype=np.int32)
    for segment in segments:
        mask = rle_to_mask(segment["rle"])
        if mask.shape != size:
            raise ValueError(f"segment {segment['segment_id']} has size {mask.shape}, expected {size}")
        labels[mask] = segment["segment_id"]
        covered += mask
    if (covered != 1).any():
        raise ValueError(
            f"segments do not partition the image: {(covered == 0).sum()} pixels uncovered, {(covered > 1).sum()} covered twice"
        )
    return labels


def class_labels(labels: np.ndarray, segments: Sequence[dict], class_names: Sequence[str], other: int) -> np.ndarray:
    """(H, W) segment ids → (H, W) int64 class ids by each segment's ``label`` name: its index in
    ``class_names``; names not there (``ignore``, unknown, None) → ``other``."""
    index = {name: i for i, name in enumerate(class_names)}
    lookup = np.full(int(labels.max()) + 1, other, dtype=np.int64)
    for segment in segments:
        lookup[segment["segment_id"]] = index.get(segment.get("label"), other)
    return lookup[labels]


def png_bytes(labels: np.ndarray, palette: Sequence[int] | None = None) -> bytes:
    """(H, W) label map → PNG bytes: 8-bit (with ``palette``, 768 ints: a palette PNG) when every id
    fits, else 16-bit grey."""
    if labels.max(initial=0) <= 255:
        data = np.ascontiguousarray(labels, dtype=np.uint8)
        mode = "P" if palette else "L"
        image = Image.frombuffer(mode, (data.shape[1], data.shape[0]), data.tobytes(), "raw", mode, 0, 1)
        if palette:
            image.putpalette(list(palette))
    else:
        image = Image.fromarray(labels.astype(np.uint16))  # mode I;16
    stream = io.BytesIO()
    image.save(stream, format="PNG")
    return stream.getvalue()
