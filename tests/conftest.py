"""Shared fixtures: the tiny backbone, real test images, an embedded Ray. Plain helpers (paths,
flags, builders) are in ``helpers.py``: tests import those, never this file."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import IMAGES


@pytest.fixture(scope="session")
def tiny():
    from dsseg.model.backbone import load_backbone

    return load_backbone("tiny", device="cpu")


@pytest.fixture(scope="session")
def bsds_image() -> np.ndarray:
    """A real 481×321 BSDS500 photograph, (H, W, 3) uint8."""
    from dsseg.io.images import load_rgb

    return load_rgb(str(IMAGES / "135069.jpg"))


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from dsseg.job.runner import init_ray

    init_ray()
    yield ray
    ray.shutdown()
