"""Benchmark readers: each gives samples (id, image, label file) and ground truth as (H, W)
class maps with 255 = ignore; ``load_dataset(name, root)`` picks one by name and checks its root."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsseg.evaluation.datasets.base import (
    IGNORE,
    ClassLabels,
    Dataset,
    DatasetRootError,
    GroundTruth,
    RegionAnnotations,
    Sample,
)
from dsseg.evaluation.datasets.png import (
    ade20k150,
    camvid,
    cityscapes27,
    coco_object_curated,
    cocostuff27,
    manifest_dataset,
    pascal_context,
    voc2012,
)
from dsseg.evaluation.datasets.regions import BSDS500, ADE20KFull, COCOObject, WeizmannHorses, decode_ade20k_seg

DATASETS: dict[str, Callable[..., Dataset]] = {
    "cocostuff27": cocostuff27,
    "cityscapes27": cityscapes27,
    "ade20k150": ade20k150,
    "ade20k_full": ADE20KFull,
    "voc2012": voc2012,
    "context59": lambda root, split="val": pascal_context(root, split, classes=59),
    "context60": lambda root, split="val": pascal_context(root, split, classes=60),
    "coco_object": COCOObject,
    "coco_object_curated": coco_object_curated,
    "bsds500": BSDS500,
    "camvid": camvid,
    "horse": WeizmannHorses,
    "manifest": manifest_dataset,
}


def reader_splits(name: str) -> tuple[bool, str | None]:
    """(whether the reader ``name`` takes a ``split``, the split it reads when none is given)."""
    import inspect

    try:
        parameter = inspect.signature(DATASETS[name]).parameters.get("split")
    except (KeyError, TypeError, ValueError):
        return False, None
    if parameter is None:
        return False, None
    return True, None if parameter.default is inspect.Parameter.empty else parameter.default


def load_dataset(name: str, root: str | Path, **options: Any) -> Dataset:
    """The reader ``name`` over ``root`` (``options``: e.g. ``split``); clear errors for unknown
    names and for roots that lack what the reader needs."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(DATASETS)}")
    if not Path(root).exists():
        raise DatasetRootError(f"{name}: root {root} does not exist")
    return DATASETS[name](root, **options)


__all__ = [
    "DATASETS",
    "IGNORE",
    "ClassLabels",
    "Dataset",
    "GroundTruth",
    "RegionAnnotations",
    "DatasetRootError",
    "Sample",
    "decode_ade20k_seg",
    "load_dataset",
    "reader_splits",
]
