"""The Parquet schema of segment-job output (one row per image × method config)."""

from __future__ import annotations

import pyarrow as pa

TIMING_STAGES = ("decode", "encode", "invert", "unet", "aggregate", "segment", "upsample", "rle", "caption")
# Error-row reason codes that a new try may not repeat (a flaky read, memory, a model or encode
# fault); --retry-errors redoes these. Input faults (corrupt, truncated, too_large, …) are final.
TRANSIENT_ERRORS = ("read_failed", "out_of_memory", "model_failed", "encode_failed")

RLE_TYPE = pa.struct([("size", pa.list_(pa.int32(), 2)), ("counts", pa.string())])
SEGMENT_TYPE = pa.struct(
    [
        ("segment_id", pa.int32()),
        ("rle", RLE_TYPE),
        ("area", pa.int64()),
        ("bbox", pa.list_(pa.float32(), 4)),
        ("label", pa.string()),
        ("score", pa.float32()),
        ("parent", pa.int32()),
    ]
)
TIMINGS_TYPE = pa.struct([(stage, pa.float32()) for stage in TIMING_STAGES])

# Every row names its image; every result row also its config and outcome. One list each, so the
# schemas below cannot drift apart.
IMAGE_FIELDS = [("image_id", pa.string()), ("source", pa.string()), ("width", pa.int32()), ("height", pa.int32())]
RESULT_FIELDS = [
    *IMAGE_FIELDS,
    ("method", pa.string()),
    ("config_id", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
]

# caption: what the captioner wrote for the image, where the config read captions (else null).
OUTPUT_SCHEMA = pa.schema(
    [*RESULT_FIELDS, ("segments", pa.list_(SEGMENT_TYPE)), ("timings_ms", TIMINGS_TYPE), ("caption", pa.string())]
)

# Between the CPU decode stage and the model actors: the prepared model input of each image.
DECODED_SCHEMA = pa.schema(
    [
        *IMAGE_FIELDS,
        ("error", pa.string()),
        ("pixels", pa.binary()),  # (input_h, input_w, 3) uint8, C order
        ("input_h", pa.int32()),
        ("input_w", pa.int32()),
        ("box", pa.list_(pa.float32(), 4)),  # (top, left, height, width) in original pixels
        ("configs", pa.list_(pa.string())),  # config ids still to produce for this image
        ("classes", pa.list_(pa.string())),  # the image's candidate class names (None: the configs')
        ("decode_ms", pa.float32()),
    ]
)

# Between the model actors and the CPU encode-and-write stage: one row per image × config,
# labels still in the model-input frame.
MODEL_SCHEMA = pa.schema(
    [
        *RESULT_FIELDS,
        ("labels", pa.binary()),  # (input_h, input_w) int32, C order
        ("input_h", pa.int32()),
        ("input_w", pa.int32()),
        ("box", pa.list_(pa.float32(), 4)),
        ("names", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float32())),
        ("parents", pa.list_(pa.int32())),
        ("background", pa.bool_()),  # segment 0 is the background class (MethodResult.background)
        ("timings_ms", TIMINGS_TYPE),
        ("caption", pa.string()),
    ]
)


def row_identity(image: dict, method: str, config_id: str, status: str, error: str | None) -> dict:
    """The RESULT_FIELDS of one image × config row, the image's fields taken from ``image``."""
    return {name: image[name] for name, _ in IMAGE_FIELDS} | {
        "method": method,
        "config_id": config_id,
        "status": status,
        "error": error,
    }
