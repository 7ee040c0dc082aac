"""Stage 3 of the segment job (CPU tasks): labels to the mask frame, COCO RLE, Parquet part files.

A row that cannot be encoded becomes an error row (``encode_failed:``), never a failed task.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from dsseg.io.images import Geometry
from dsseg.io.results import write_parts
from dsseg.io.schema import OUTPUT_SCHEMA, WRITTEN_SCHEMA
from dsseg.job.decode import describe
from dsseg.segmentation import segmentation_from_labels
from dsseg.timing import StageTimer


def encode_and_write(batch: pa.Table, output: str, mask_frame: str = "original") -> pa.Table:
    """MODEL_SCHEMA rows → labels in ``mask_frame`` → COCO RLE rows → Parquet part files under
    ``output``. Returns one WRITTEN_SCHEMA row per row written (progress, summary)."""
    table = pa.Table.from_pylist([encode_row(row, mask_frame) for row in batch.to_pylist()], schema=OUTPUT_SCHEMA)
    if len(table):
        write_parts(table, output)
    return table.select(WRITTEN_SCHEMA.names).cast(WRITTEN_SCHEMA)


def encode_row(row: dict, mask_frame: str = "original") -> dict:
    """One MODEL_SCHEMA row → one OUTPUT_SCHEMA row: segments as RLE at the original size, or
    (``mask_frame="model"``) in the model-input frame, ids compacted either way."""
    out = {name: row[name] for name in OUTPUT_SCHEMA.names if name in row}
    out["segments"] = []
    if row["status"] != "ok":
        return out
    timer = StageTimer()
    try:
        shape = (row["input_h"], row["input_w"])
        labels = np.frombuffer(row["labels"], dtype=np.int32).reshape(shape)
        if mask_frame == "model":
            geometry = Geometry(shape, (0, 0, *shape), shape)  # identity: the model frame itself
        else:
            geometry = Geometry((row["height"], row["width"]), tuple(row["box"]), shape)
        segmentation = segmentation_from_labels(
            labels, geometry, row["method"], timer, row["names"], row["scores"], row["parents"], bool(row["background"])
        )
        with timer.stage("rle"):
            out["segments"] = segmentation.to_rles()
    except Exception as error:
        out.update(status="error", error=describe(error, "encode_failed"), segments=[])
    out["timings_ms"] = {**row["timings_ms"], **timer.ms}
    return out
