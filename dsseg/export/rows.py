"""The rows an export reads, one part file (and one row group) at a time, and what every format
derives from a row: its label maps, its class names and its image.

Memory holds one row group of one part file (the job writes parts of 256 rows; a compacted part
is read group by group), whatever the size of the output.
"""

from __future__ import annotations

import functools
import io
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from dsseg.errors import ConfigError
from dsseg.io.images import EXIF_ORIENTATION, decode_image
from dsseg.io.masks import decode_segments
from dsseg.io.results import SEGMENTS_DIR, part_files, read_config
from dsseg.io.sources import TAR_EXTENSION, is_uri, join, list_tar, read_bytes, resolve
from dsseg.model.vocabularies import BACKGROUND_NAME, IGNORE_LABEL, IGNORE_NAME

ROW_COLUMNS = ["image_id", "source", "width", "height", "config_id", "status", "error", "segments"]
BATCH_ROWS = 256  # rows decoded to Python at once
PSEUDOLABEL_RUNS = ("run-weak", "run-agnostic")
MAX_CLASSES = IGNORE_LABEL  # class ids 0..254 in 8-bit label PNGs; 255 is ignore


def resolve_output(output: str) -> tuple[str, tuple[str, ...] | None]:
    """(the segment-job output to read, the class list its pseudo-label run recorded, if any).

    A pseudo-label output holds one segment-job output per kind (``run-weak``: class labels,
    ``run-agnostic``: class-agnostic segments): one present is taken; with both, ``ConfigError``
    says which to give. A ``run-*`` folder of a pseudo-label output keeps the run's class order.
    """
    fs, root = resolve(output)
    if read_config(output) is None:
        runs = [name for name in PSEUDOLABEL_RUNS if read_config(join(output, name)) is not None]
        if len(runs) == 1:
            output = join(output, runs[0])
        elif runs:
            raise ConfigError(
                "output",
                f"{output} is a pseudo-label output with two runs: export {join(output, 'run-weak')} "
                f"(class labels) or {join(output, 'run-agnostic')} (class-agnostic segments)",
            )
        elif fs.get_file_info(f"{root}/{SEGMENTS_DIR}").type.name != "Directory":
            raise ConfigError("output", f"{output} holds no segment-job output (no config.json or segments/)")
    summary = _parent_summary(output)
    classes = tuple(summary["classes"]) if summary and isinstance(summary.get("classes"), list) else None
    return output, classes


def _parent_summary(output: str) -> dict[str, Any] | None:
    """The ``summary.json`` beside a pseudo-label run folder, or None."""
    if is_uri(output) or Path(output).name not in PSEUDOLABEL_RUNS:
        return None
    path = Path(output).parent / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def choose_config(output: str, config_id: str | None) -> str:
    """The config to export: ``config_id`` (it must be in the output), or the output's only one."""
    record = read_config(output) or {}
    known = [entry["config_id"] for entry in record.get("configs", [])]
    if not known:  # an output without config.json: the partition folders name the configs
        known = sorted({path.rsplit("/", 2)[-2].split("=", 1)[1] for path in part_files(output)})
    if config_id is not None:
        if config_id not in known:
            raise ConfigError("config_id", f"{config_id!r} is not a config of {output} (it has {', '.join(known)})")
        return config_id
    if len(known) == 1:
        return known[0]
    if not known:
        raise ConfigError("output", f"{output} has no results yet")
    methods = {entry["config_id"]: entry.get("method", "?") for entry in record.get("configs", [])}
    listed = ", ".join(f"{cid} ({methods.get(cid, '?')})" for cid in known)
    raise ConfigError("config_id", f"{output} holds {len(known)} configs; export one with --config ID: {listed}")


@dataclass
class Counts:
    """What a stream of rows held: rows exported, error rows skipped (by reason), rows skipped by
    the export itself (by reason: an unreadable image, a name given twice, …)."""

    exported: int = 0
    error_rows: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        return {
            "rows_exported": self.exported,
            "error_rows_skipped": sum(self.error_rows.values()),
            "errors_by_reason": dict(sorted(self.error_rows.items())),
            "rows_skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
        }


def stream_rows(output: str, config_id: str, counts: Counts) -> Iterator[dict[str, Any]]:
    """The ok rows of ``config_id`` (dicts of ``ROW_COLUMNS``), part file by part file in
    ``part_files`` order, row group by row group; error rows are counted by reason and skipped."""
    fs, _ = resolve(output)
    for path in part_files(output, [config_id]):
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            columns = [name for name in ROW_COLUMNS if name in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                for row in batch.to_pylist():
                    if row.get("status") != "ok" or not row.get("segments"):
                        counts.error_rows[(row.get("error") or "no_segments").split(":", 1)[0]] += 1
                        continue
                    yield row


def first_ok_row(output: str, config_id: str) -> dict[str, Any] | None:
    """The first ok row of ``config_id`` (reads only as far as it), or None."""
    return next(stream_rows(output, config_id, Counts()), None)


class ClassNames:
    """Class names → ids of a named export: ``known`` first (a pseudo-label run's list, background
    first), other names in the order rows bring them. ``background`` is 0; ``ignore`` and
    unnamed segments are ``IGNORE_LABEL`` (255). At most ``MAX_CLASSES`` (8-bit label PNGs)."""

    def __init__(self, known: Sequence[str] | None = None) -> None:
        names = [BACKGROUND_NAME, *[n for n in known or () if n not in (BACKGROUND_NAME, IGNORE_NAME)]]
        self.names: list[str] = names
        self.ids: dict[str, int] = {name: i for i, name in enumerate(names)}

    def id_of(self, name: str | None) -> int:
        if name is None or name == IGNORE_NAME:
            return IGNORE_LABEL
        found = self.ids.get(name)
        if found is None:
            if len(self.names) >= MAX_CLASSES:
                raise ValueError(f"more than {MAX_CLASSES} class names: 8-bit label maps cannot hold {name!r}")
            found = self.ids[name] = len(self.names)
            self.names.append(name)
        return found

    def id2label(self) -> dict[int, str]:
        return {**dict(enumerate(self.names)), IGNORE_LABEL: IGNORE_NAME}


@dataclass(frozen=True)
class Kind:
    """What an output's rows carry: segment names (``named``) and scores (``scored``), judged by its first ok row."""

    named: bool
    scored: bool

    @classmethod
    def of(cls, row: dict[str, Any] | None) -> Kind:
        segments = (row or {}).get("segments") or []
        return cls(
            named=any(s.get("label") is not None for s in segments),
            scored=any(s.get("score") is not None for s in segments),
        )


class Row:
    """One ok row and what formats derive from it, each computed once when first asked for."""

    def __init__(self, row: dict[str, Any], classes: ClassNames | None) -> None:
        self.row = row
        self.classes = classes
        self.image_id: str = row["image_id"]
        self.segments: list[dict[str, Any]] = row["segments"]

    @functools.cached_property
    def segment_ids(self) -> np.ndarray:
        """(H, W) int32 segment ids (``decode_segments``)."""
        return decode_segments(self.segments)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the masks."""
        height, width = self.segments[0]["rle"]["size"]
        return int(height), int(width)

    def class_id(self, segment: dict[str, Any]) -> int:
        """A segment's class id (``ClassNames``; a class-agnostic export has none: ``IGNORE_LABEL``)."""
        return self.classes.id_of(segment.get("label")) if self.classes is not None else IGNORE_LABEL

    def segment_name(self, segment: dict[str, Any]) -> str:
        """A segment's label: its class name, or ``segment_<id>`` when it has none."""
        label = segment.get("label")
        return label if label is not None else f"segment_{segment['segment_id']}"

    @functools.cached_property
    def class_ids(self) -> np.ndarray:
        """(H, W) uint8 class ids of a named export (255 = ignore)."""
        lookup = np.full(int(self.segment_ids.max()) + 1, IGNORE_LABEL, dtype=np.uint8)
        for segment in self.segments:
            lookup[segment["segment_id"]] = self.class_id(segment)
        return lookup[self.segment_ids]

    @functools.cached_property
    def object_ids(self) -> np.ndarray:
        """(H, W) uint16 instance ids as VOC's SegmentationObject holds them: 0 for background
        (and, in a named export, for segments named background), segment k → k + 1, 255 ignore
        where a named segment is ``ignore``."""
        lookup = np.arange(1, int(self.segment_ids.max()) + 2, dtype=np.uint16)
        if self.classes is not None:
            for segment in self.segments:
                name = segment.get("label")
                if name == BACKGROUND_NAME:
                    lookup[segment["segment_id"]] = 0
                elif name is None or name == IGNORE_NAME:
                    lookup[segment["segment_id"]] = IGNORE_LABEL
        return lookup[self.segment_ids]


class ImageReader:
    """The image of a row in the frame of its masks, as (encoded bytes, extension with its dot).

    The stored bytes are kept when they already are that frame (no EXIF rotation, the masks'
    size); else the image is decoded upright (as the job decoded it) and written as PNG. Masks
    that are not at the image's size (a job that wrote model-frame masks) raise ``ValueError``.
    ``root``: read ``ROOT/<image_id>`` instead of each row's ``source``."""

    def __init__(self, root: str | None = None, exif_transpose: bool = True) -> None:
        self.root = root
        self.exif_transpose = exif_transpose

    def source_of(self, row: dict[str, Any]) -> str:
        return join(self.root, row["image_id"]) if self.root else row["source"]

    def read(self, row: dict[str, Any], size: tuple[int, int]) -> tuple[bytes, str]:
        source = self.source_of(row)
        if source.endswith(TAR_EXTENSION) and not self.root:
            member = _tar_members(source).get(row["image_id"])
            if member is None:
                raise OSError(f"{row['image_id']!r} is not a member of {source!r}")
            data = read_bytes(source, member["offset"], member["size"])
        else:
            data = read_bytes(source)
        with Image.open(io.BytesIO(data)) as image:
            stored = (image.height, image.width)
            kind = (image.format or "").lower()
            try:
                orientation = image.getexif().get(EXIF_ORIENTATION, 1) if self.exif_transpose else 1
            except Exception:
                orientation = 1
        if stored == size and orientation in (None, 1) and kind in ("jpeg", "png"):
            return data, ".jpg" if kind == "jpeg" else ".png"
        rgb = decode_image(data, max_pixels=None, exif_transpose=self.exif_transpose)[0]
        if rgb.shape[:2] != size:
            raise ValueError(f"masks of {size} are not at the image's size {rgb.shape[:2]}")
        stream = io.BytesIO()
        Image.fromarray(rgb).save(stream, format="PNG")
        return stream.getvalue(), ".png"


@functools.lru_cache(maxsize=16)
def _tar_members(source: str) -> dict[str, dict[str, Any]]:
    return {item["image_id"]: item for item in list_tar(source)}
