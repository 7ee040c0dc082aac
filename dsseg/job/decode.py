"""Stage 1 of the segment job (CPU tasks): read each item's bytes, decode, prepare the model input.

A bad input never stops the job: it becomes a row whose ``error`` starts with a reason code
(``empty_file:``, ``not_an_image:``, ``truncated:``, ``corrupt:``, ``too_large:``, ``read_failed:``).
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from dsseg.io.images import InputError, decode_image, rescale_geometry
from dsseg.io.schema import DECODED_SCHEMA
from dsseg.io.sources import read_bytes
from dsseg.model.config import Preparation


def describe(error: BaseException, code: str) -> str:
    """An error row's reason: ``code: ErrorType: message``."""
    return f"{code}: {type(error).__name__}: {error}"


def decode_batch(
    batch: pa.Table,
    preparation: Preparation,
    max_pixels: int | None,
    max_side: int | None,
    exif_transpose: bool = True,
    needs_classes: bool = False,
) -> pa.Table:
    """Item rows (``image_id, source, offset, size, configs, classes``) → DECODED_SCHEMA rows.
    ``needs_classes``: an item without (or with an empty) class list is an error row."""
    rows = []
    for item in batch.to_pylist():
        start = time.perf_counter()
        row: dict[str, Any] = {key: item[key] for key in ("image_id", "source", "configs", "classes")}
        try:
            if not item["source"]:
                raise InputError("read_failed", "the manifest gives this image no uri")
            if needs_classes and not item["classes"]:
                raise InputError("no_classes", "the manifest gives this image no classes and the config none")
            try:
                data = read_bytes(item["source"], item["offset"], item["size"])
            except Exception as error:
                raise InputError("read_failed", f"{type(error).__name__}: {error}") from None
            rgb, original_hw = decode_image(
                data, max_pixels=max_pixels, max_side=max_side, exif_transpose=exif_transpose
            )
            row.update(height=original_hw[0], width=original_hw[1])
            pixels, geometry = preparation.prepare(rgb)
            geometry = rescale_geometry(geometry, original_hw)
            row.update(
                pixels=pixels.tobytes(), input_h=pixels.shape[0], input_w=pixels.shape[1], box=list(geometry.box)
            )
        except InputError as error:
            row["error"] = str(error)
        except Exception as error:  # anything else about one input is that input's error row
            row["error"] = describe(error, "corrupt")
        row["decode_ms"] = (time.perf_counter() - start) * 1000.0
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)
