"""Shared fixtures: the tiny backbone, real test images, an embedded Ray."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
IMAGES = DATA / "images"
GROUND_TRUTH = DATA / "gt"


def load_job(name: str):
    """The module of ``jobs/<name>.py`` (the scripts ``ray job submit`` runs), imported by path."""
    spec = importlib.util.spec_from_file_location(f"{name}_job", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not in sys.modules: Ray pickles its functions by value
    return module


@pytest.fixture(scope="session")
def tiny():
    from dsseg.model.backbone import load_backbone

    return load_backbone("tiny", device="cpu")


@pytest.fixture(scope="session")
def bsds_image() -> np.ndarray:
    """A real 481×321 BSDS500 photograph, (H, W, 3) uint8."""
    from dsseg.io.images import as_rgb_array

    return as_rgb_array(str(IMAGES / "135069.jpg"))


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from dsseg.job.runner import init_ray

    init_ray()
    yield ray
    ray.shutdown()
