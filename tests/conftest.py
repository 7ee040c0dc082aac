"""Shared fixtures: the tiny backbone, real test images, an embedded Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
IMAGES = DATA / "images"
GROUND_TRUTH = DATA / "gt"
TINY = ["--backbone", "tiny", "--device", "cpu"]  # command-line flags of a quick CPU run


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


def output_rows(ids, config="c1", status="ok", error=None):
    """OUTPUT_SCHEMA rows of ``ids`` for one config, without segments (for results-folder tests)."""
    import pyarrow as pa

    from dsseg.io.schema import OUTPUT_SCHEMA

    row = {"source": "", "width": 4, "height": 4, "method": "diffseg", "config_id": config, "status": status}
    return pa.Table.from_pylist(
        [row | {"image_id": i, "error": error, "segments": []} for i in ids], schema=OUTPUT_SCHEMA
    )
