"""The benchmark's default input: a synthetic photograph drawn in process, so that ``dsseg benchmark``
runs as installed (no file of a source checkout needed).

481×321, the size of a BSDS500 image, encoded as a JPEG so that the decode stage decodes one:
a sky graded top to bottom, a ground band, a dark block and a bright disc, with seeded grain, so
the attention has regions to find. The same bytes on every call.
"""

from __future__ import annotations

import functools
import io

import numpy as np

SIZE = (321, 481)  # (height, width)
NAME = "synthetic 481x321 JPEG (dsseg.benchmark.image)"  # ASCII: the report is JSON


@functools.cache
def synthetic_jpeg() -> bytes:
    """The default benchmark image as JPEG bytes (quality 90)."""
    from PIL import Image

    height, width = SIZE
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = np.empty((height, width, 3))
    pixels[:] = (110.0, 160.0, 225.0)
    pixels += (rows / height)[..., None] * (60.0, 50.0, 20.0)  # sky, lighter towards the horizon
    ground = rows > 0.62 * height + 12.0 * np.sin(cols / 37.0)
    pixels[ground] = (70.0, 120.0, 45.0)
    block = (rows > 0.30 * height) & (rows < 0.75 * height) & (cols > 0.55 * width) & (cols < 0.80 * width)
    pixels[block] = (60.0, 45.0, 40.0)
    disc = (rows - 0.45 * height) ** 2 + (cols - 0.28 * width) ** 2 < (0.16 * height) ** 2
    pixels[disc] = (230.0, 200.0, 90.0)
    pixels += np.random.default_rng(0).normal(0.0, 6.0, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
