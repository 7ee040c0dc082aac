"""Run one export: the writer of its format over the streamed rows of one config, inside a staged folder."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from dsseg.export.folder import staged
from dsseg.export.rows import (
    ClassNames,
    Counts,
    ImageReader,
    Kind,
    Row,
    choose_config,
    first_ok_row,
    resolve_output,
    stream_rows,
)
from dsseg.export.settings import ExportSettings
from dsseg.io.results import read_config

# What a row that cannot be exported raises, by the reason it is counted under.
ROW_PROBLEMS: dict[type[BaseException], str] = {
    FileExistsError: "duplicate_name",
    FileNotFoundError: "image_not_found",
    OSError: "image_unreadable",
}
VALUE_PROBLEMS = {"not at the image's size": "mask_frame", "do not partition": "bad_segments"}


def make_writer(settings: ExportSettings, folder: Path, kind: Kind, classes: ClassNames | None, config_id: str):
    """The writer of ``settings.format`` into ``folder``: ``write(Row)`` per row, ``finish()`` → its summary."""
    record = read_config(settings.output) or {}
    images = ImageReader(settings.images, exif_transpose=record.get("exif_transpose", True))
    copied = images if settings.copy_images else None
    if settings.format == "coco":
        from dsseg.export.coco import CocoWriter

        return CocoWriter(folder, classes)
    if settings.format in ("voc", "cvat"):
        from dsseg.export.voc import VocWriter

        return VocWriter(folder, classes, copied, cvat=settings.format == "cvat")
    if settings.format == "fiftyone":
        from dsseg.export.fiftyone import FiftyOneWriter

        return FiftyOneWriter(folder, classes, images)
    if settings.format == "hf":
        from dsseg.export.hf import HfWriter

        return HfWriter(folder, kind, classes, images, settings.shard_rows)
    from dsseg.export.labelstudio import LabelStudioWriter

    return LabelStudioWriter(folder, classes, images, config_id)


def row_problem(error: Exception) -> str | None:
    """The reason a row that raised ``error`` is skipped under, or None (a bug: re-raised)."""
    from dsseg.export.voc import TooManySegments
    from dsseg.io.images import InputError

    if isinstance(error, TooManySegments):
        return "too_many_segments"
    if isinstance(error, InputError):
        return f"image_{error.reason}"
    for kind, reason in ROW_PROBLEMS.items():
        if isinstance(error, kind):
            return reason
    for words, reason in VALUE_PROBLEMS.items():
        if isinstance(error, ValueError) and words in str(error):
            return reason
    return None


def export(settings: ExportSettings) -> dict[str, Any]:
    """Write ``settings.output``'s rows of one config to ``settings.to`` in ``settings.format``;
    returns the summary (rows exported, error rows and skipped rows by reason, the writer's own
    counts, seconds). ``ConfigError`` for an output, config or target that cannot work."""
    start = time.perf_counter()
    output, known = resolve_output(settings.output)
    settings = dataclasses.replace(settings, output=output)
    config_id = choose_config(output, settings.config_id)
    kind = Kind.of(first_ok_row(output, config_id))
    classes = ClassNames(known) if kind.named else None
    counts = Counts()
    target = Path(settings.to)
    with staged(target, settings.overwrite) as folder:
        writer = make_writer(settings, folder, kind, classes, config_id)
        for record in stream_rows(output, config_id, counts):
            if settings.limit is not None and counts.exported >= settings.limit:
                break
            try:
                writer.write(Row(record, classes))
            except (OSError, ValueError) as error:
                reason = row_problem(error)
                if reason is None:
                    raise
                counts.skipped[reason] += 1
                continue
            counts.exported += 1
        written = writer.finish()
    return {
        "format": settings.format,
        "output": output,
        "config_id": config_id,
        "to": str(target),
        **counts.summary(),
        settings.format: written,
        **({"classes": len(classes.names)} if classes is not None else {}),
        "seconds": round(time.perf_counter() - start, 2),
    }
