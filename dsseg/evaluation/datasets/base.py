"""What every benchmark reader gives: samples (image id, image path, label path) and ground
truth as (H, W) class maps with 255 = ignore."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from dsseg.model.vocabularies import IGNORE_LABEL

IGNORE = IGNORE_LABEL


class DatasetRootError(FileNotFoundError):
    """A dataset root lacks what its reader needs; the message names what and the layout."""


@dataclass(frozen=True)
class ClassLabels:
    """Ground truth by class: ``labels`` (H, W) uint8 classes 0..K−1, 255 = ignore."""

    labels: np.ndarray


@dataclass(frozen=True)
class RegionAnnotations:
    """Ground truth by region, without classes: ``annotators``, one (H, W) int32 region map each
    (BSDS500's several human segmentations)."""

    annotators: list[np.ndarray]


GroundTruth = ClassLabels | RegionAnnotations


@dataclass(frozen=True)
class Sample:
    """One evaluation image: its id, the image file and its ground-truth file (if one per image)."""

    image_id: str
    image: str
    label: str | None = None


class Dataset:
    """A benchmark split. Subclasses set ``name``, ``class_names`` and the samples, and implement
    ``load_label``: (H, W) uint8 classes 0..K−1, 255 = ignore. ``ground_truth`` gives it typed:
    ``ClassLabels`` here, ``RegionAnnotations`` for the region benchmarks."""

    name = "dataset"
    class_names: tuple[str, ...] = ()

    def __init__(self, samples: Sequence[Sample]) -> None:
        if not samples:
            raise DatasetRootError(f"{self.name}: no samples found")
        self._samples = list(samples)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def samples(self, limit: int | None = None) -> list[Sample]:
        return self._samples[:limit] if limit else list(self._samples)

    def load_label(self, sample: Sample) -> np.ndarray:
        raise NotImplementedError

    def ground_truth(self, sample: Sample) -> GroundTruth:
        """The sample's ground truth, typed by what it holds."""
        return ClassLabels(self.load_label(sample))

    def manifest(self, limit: int | None = None) -> pa.Table:
        """``image_id, uri`` rows: the segment job's input for this split."""
        chosen = self.samples(limit)
        return pa.table(
            {"image_id": [s.image_id for s in chosen], "uri": [str(Path(s.image).absolute()) for s in chosen]}
        )


def require(path: Path, what: str, dataset: str, layout: str) -> Path:
    """``path`` if it exists, else a ``DatasetRootError`` that names it and shows the layout."""
    if not path.exists():
        expected = ", ".join(line.strip() for line in layout.splitlines() if line.strip())
        raise DatasetRootError(f"{dataset}: {what} not found at {path}; expected layout under the root: {expected}")
    return path


def read_indices(path: str | Path) -> np.ndarray:
    """A label PNG's stored values: (H, W) uint8/uint16 (palette PNGs give their indices)."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L", "I;16", "I"):
            raise ValueError(f"{path}: a label map must be a palette or grayscale PNG; got mode {image.mode}")
        return np.asarray(image)


def lookup_table(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """(size,) uint8: raw value → class, every value not in ``mapping`` → 255."""
    table = np.full(size, IGNORE, dtype=np.uint8)
    for raw, cls in mapping.items():
        table[raw] = cls
    return table


def read_list(path: Path) -> list[str]:
    """Non-empty stripped lines of a split list."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
