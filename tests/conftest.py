"""Shared fixtures: the tiny backbone, real test images, an embedded Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
IMAGES = DATA / "images"
GROUND_TRUTH = DATA / "gt"


@pytest.fixture(scope="session")
def tiny():
    from dsseg.backbone import load_backbone

    return load_backbone("tiny", device="cpu")


@pytest.fixture(scope="session")
def bsds_image() -> np.ndarray:
    """A real 481×321 BSDS500 photograph, (H, W, 3) uint8."""
    from dsseg.image import as_rgb_array

    return as_rgb_array(str(IMAGES / "135069.jpg"))


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from dsseg.pipeline import init_ray

    init_ray()
    yield ray
    ray.shutdown()


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings of the same pixels."""
    _, a_ids = np.unique(a.ravel(), return_inverse=True)
    _, b_ids = np.unique(b.ravel(), return_inverse=True)
    table = np.zeros((a_ids.max() + 1, b_ids.max() + 1))
    np.add.at(table, (a_ids, b_ids), 1)

    def pairs(x):
        return (x * (x - 1) / 2).sum()

    index, rows, cols, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), pairs(np.array([a.size]))
    expected = rows * cols / total
    return float((index - expected) / ((rows + cols) / 2 - expected))
