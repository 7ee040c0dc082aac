"""A segment job's output, browsed (no web framework here): an index of its rows, queried, paged, and
the few rows of a page read whole.

Opening reads only small columns of every part file (``image_id``, ``config_id``, ``status``, ``error``
and the segments' ids, not their masks), several files at a time: the index of a million rows holds
tens of MiB. Per-image scores come from an evaluation's ``per_image.parquet`` (``dsseg evaluate``
writes it beside its ``run/`` folder), joined by image and config. A page's rows are read from their
own part files only, so memory holds one page of masks.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dsseg.io.images import decode_image
from dsseg.io.results import SEGMENTS_DIR, part_files, part_uris, read_config, read_part
from dsseg.io.sources import TAR_EXTENSION, join, list_tar, read_bytes, resolve
from dsseg.model.config import Preparation

SCORES_FILE = "per_image.parquet"
RUN_DIR = "run"  # where dsseg evaluate keeps the segment job's rows
INDEX_COLUMNS = ["image_id", "config_id", "status", "error", "segments.list.element.segment_id"]
# Per-image score columns of per_image.parquet, in the order offered for sorting.
SCORE_COLUMNS = ("miou", "acc", "semantic_miou", "covering", "pri", "voi")
SORT_KEYS = ("image_id", "segments", *SCORE_COLUMNS)
READ_THREADS = 8  # part files read at once while indexing (I/O and decompression release the GIL)


class OutputError(ValueError):
    """A folder that holds no segment-job rows, or a scores file that does not fit them."""


@dataclass(frozen=True)
class ConfigInfo:
    """One method config of the output: ``title`` says it as a user would (method and its parameters)."""

    config_id: str
    method: str
    title: str


def locate(output: str, scores: str | None = None) -> tuple[str, str | None]:
    """(the folder holding ``segments/``, the per-image scores file or None) for a segment job's
    output or an evaluation's (whose rows are in ``run/`` and scores in ``per_image.parquet``).
    Local paths or URIs (``s3://``, ``gs://``)."""
    run = output
    if not part_files(output) and part_files(join(output, RUN_DIR)):
        run = join(output, RUN_DIR)
    if not part_files(run):
        raise OutputError(
            f"{output!r} holds no segment-job rows ({SEGMENTS_DIR}/config=*/part-*.parquet): give the --output "
            "folder of a segment job (jobs/segment.py, dsseg job) or of an evaluation (jobs/evaluate.py)"
        )
    if scores is None:
        found = join(output, SCORES_FILE)
        scores = found if run != output and is_file(found) else None  # an evaluation's, beside its run/
    elif not is_file(scores):
        raise OutputError(f"scores file {scores!r} does not exist (an evaluation writes OUTPUT/{SCORES_FILE})")
    return run, scores


def is_file(path: str) -> bool:
    fs, inside = resolve(path)
    return fs.get_file_info(inside).type == pafs.FileType.File


def index_part(path: str) -> pa.Table:
    """One part file's index: image_id, config_id, status, reason (the error's code) and segments (count).
    Reads only those columns, and of the segments only their ids (a leaf column: no masks)."""
    fs, inside = resolve(path)
    with fs.open_input_file(inside) as handle:
        table = pq.ParquetFile(handle).read(columns=INDEX_COLUMNS)
    reasons = pc.replace_substring_regex(table.column("error"), pattern=":.*$", replacement="")
    return pa.table(
        {
            "image_id": table.column("image_id"),
            "config_id": table.column("config_id").dictionary_encode(),
            "status": table.column("status").dictionary_encode(),
            "reason": reasons.dictionary_encode(),
            "segments": pc.list_value_length(table.column("segments")).cast(pa.int32()),
            "row": pa.array(np.arange(table.num_rows, dtype=np.int32)),
        }
    )


def build_index(files: Sequence[str]) -> pa.Table:
    """The index of every row of ``files``, with ``file`` (index into ``files``) and ``row`` locating it."""

    def one(numbered: tuple[int, str]) -> pa.Table:
        number, path = numbered
        part = index_part(path)
        return part.append_column("file", pa.array(np.full(part.num_rows, number, dtype=np.int32)))

    with ThreadPoolExecutor(READ_THREADS) as pool:
        parts = list(pool.map(one, enumerate(files)))
    return pa.concat_tables(parts, promote_options="permissive").unify_dictionaries().combine_chunks()


def config_title(record: dict[str, Any]) -> str:
    """``diffseg kl_threshold=0.9`` for a config record of ``config.json`` (its method and given params)."""
    params = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(record.get("params", {}).items()))
    return f"{record['method']} {params}".strip()


class OutputBrowser:
    """A segment job's output (``output``: its folder, or an evaluation's) and optionally per-image
    scores (``scores``: a ``per_image.parquet``; found beside the rows when not given).

    ``index``: one row per output row (image_id, config_id, status, reason, segments, row, file, and
    the score columns present). ``configs``: the configs in the index, in ``config.json``'s order.
    """

    def __init__(self, output: str, scores: str | None = None) -> None:
        self.output = output
        self.run, self.scores_path = locate(output, scores)
        self.files = part_uris(self.run)
        self.record = read_config(self.run) or {}
        index = build_index(self.files)
        self.score_columns: tuple[str, ...] = ()
        if self.scores_path is not None:
            index = self._join_scores(index, self.scores_path)
        self.index = index
        pa.default_memory_pool().release_unused()  # the per-file tables and join copies are gone: give back their pages
        recorded = {c["config_id"]: c for c in self.record.get("configs", [])}
        present = pc.unique(text(self.index, "config_id")).to_pylist()
        ordered = [c for c in recorded if c in present] + sorted(c for c in present if c not in recorded)
        self.configs = [
            ConfigInfo(c, recorded[c]["method"], config_title(recorded[c])) if c in recorded else ConfigInfo(c, "?", c)
            for c in ordered
        ]

    def _join_scores(self, index: pa.Table, path: str) -> pa.Table:
        """``index`` with the score columns of ``path`` (an evaluation's per-image records) beside each
        row: null where the image × config was not scored; the last record wins where one repeats."""
        try:
            fs, inside = resolve(path)
            with fs.open_input_file(inside) as handle:
                scores = pq.read_table(handle)
            missing = {"image_id", "config_id"} - set(scores.column_names)
            if missing:
                raise OutputError(f"{path!r} is not an evaluation's per-image scores: it lacks {sorted(missing)}")
            columns = [
                c for c in SCORE_COLUMNS if c in scores.column_names and scores.column(c).null_count < len(scores)
            ]
            keys = pa.schema([("image_id", pa.string()), ("config_id", pa.string())])
            scores = scores.select([*keys.names, *columns]).cast(
                pa.schema([*keys] + [(c, pa.float64()) for c in columns])
            )
        except (pa.ArrowException, ValueError, TypeError) as error:
            raise OutputError(f"cannot read per-image scores from {path!r}: {error}") from error
        scores = scores.append_column("record", pa.array(np.arange(len(scores), dtype=np.int64)))
        last = scores.group_by(keys.names).aggregate([("record", "max")]).column("record_max")
        scores = scores.take(last).drop_columns(["record"])
        # Row order survives: the join is on a numbered copy of the keys, then re-sorted by number.
        numbered = index.select(keys.names).cast(keys)
        numbered = numbered.append_column("position", pa.array(np.arange(index.num_rows, dtype=np.int64)))
        joined = numbered.join(scores, keys.names, join_type="left outer").sort_by("position")
        self.score_columns = tuple(columns)
        for column in columns:
            index = index.append_column(column, joined.column(column))
        return index

    @property
    def reasons(self) -> list[str]:
        """The error reasons present (``truncated``, ``corrupt``, …), most frequent first."""
        errors = self.index.filter(pc.equal(text(self.index, "status"), "error"))
        counts = pc.value_counts(text(errors, "reason"))
        pairs = sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()), key=lambda p: -p[1])
        return [value for value, _ in pairs if value]

    def query(
        self,
        config_id: str,
        sort: str = "image_id",
        descending: bool = False,
        status: str | None = None,
        reason: str | None = None,
        min_segments: int | None = None,
        max_segments: int | None = None,
    ) -> pa.Table:
        """The index rows of ``config_id`` kept by the filters (``status`` ok/error; an error ``reason``;
        a segment-count range), sorted by ``sort`` (image_id, segments or a score column; rows without
        the value last). Page through the result with ``page``."""
        if sort not in ("image_id", "segments", *self.score_columns):
            raise ValueError(f"cannot sort by {sort!r}: choose one of {['image_id', 'segments', *self.score_columns]}")
        index = self.index
        mask = pc.equal(text(index, "config_id"), config_id)
        if status:
            mask = pc.and_(mask, pc.equal(text(index, "status"), status))
        if reason:
            mask = pc.and_(mask, pc.equal(text(index, "reason"), reason))
        if min_segments is not None:
            mask = pc.and_(mask, pc.greater_equal(index.column("segments"), min_segments))
        if max_segments is not None:
            mask = pc.and_(mask, pc.less_equal(index.column("segments"), max_segments))
        kept = index.filter(mask)
        order = [(sort, "descending" if descending else "ascending")]
        if sort != "image_id":
            order.append(("image_id", "ascending"))
        return kept.take(pc.sort_indices(kept, sort_keys=order))  # nulls (rows without a score) last

    def rows(self, entries: pa.Table) -> list[dict[str, Any]]:
        """The whole output rows of index ``entries`` (same order), each of their part files read once
        (so memory holds a page's part files, not the output's)."""
        files = entries.column("file").to_pylist()
        positions = entries.column("row").to_pylist()
        wanted: dict[int, list[int]] = {}
        for file, row in zip(files, positions):
            wanted.setdefault(file, []).append(row)
        found: dict[tuple[int, int], dict[str, Any]] = {}
        for file, rows in wanted.items():
            table = read_part(self.files[file]).take(pa.array(rows, pa.int32()))
            found.update({(file, row): record for row, record in zip(rows, table.to_pylist())})
        return [found[(file, row)] for file, row in zip(files, positions)]

    def rows_for(self, config_id: str, image_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``config_id``'s rows of ``image_ids`` (those it has), by image id: a second config beside a page."""
        index = self.index
        mask = pc.and_(
            pc.equal(text(index, "config_id"), config_id),
            pc.is_in(index.column("image_id"), pa.array(list(image_ids), pa.string())),
        )
        entries = index.filter(mask)
        return {row["image_id"]: row for row in self.rows(entries)}

    def image(self, row: dict[str, Any]) -> np.ndarray:
        """The (h, w, 3) uint8 image of an output row in the frame of its masks
        (``decode_segments(row["segments"])``): as decoded (EXIF upright unless the job kept stored
        order), or the model input when the job wrote model-frame masks."""
        data = read_source(row["source"], row["image_id"])
        rgb = decode_image(data, max_pixels=None, exif_transpose=self.record.get("exif_transpose", True))[0]
        if not row["segments"]:
            return rgb
        size = tuple(row["segments"][0]["rle"]["size"])
        if rgb.shape[:2] == size:
            return rgb
        prepared = self.preparation(row["config_id"]).prepare(rgb)[0]
        if prepared.shape[:2] != size:
            raise OutputError(f"{row['image_id']}: masks of {size} match neither the image nor its model input")
        return prepared

    def preparation(self, config_id: str) -> Preparation:
        """The model-input preparation a config recorded (image size, geometry, antialias)."""
        for config in self.record.get("configs", []):
            if config["config_id"] == config_id:
                extract = config.get("extract_config", {})
                return Preparation(**{k: extract[k] for k in ("image_size", "geometry", "antialias") if k in extract})
        return Preparation()


def text(table: pa.Table, column: str) -> pa.ChunkedArray:
    """A dictionary-encoded string column of the index as plain strings (for comparisons)."""
    return table.column(column).cast(pa.string())


def read_source(source: str, image_id: str) -> bytes:
    """An image's bytes: the file ``source``, or the member ``image_id`` of the tar shard ``source``."""
    if source.endswith(TAR_EXTENSION):
        item = tar_members(source).get(image_id)
        if item is None:
            raise OutputError(f"{image_id!r} is not a member of {source!r}")
        return read_bytes(source, item["offset"], item["size"])
    return read_bytes(source)


@functools.lru_cache(maxsize=16)
def tar_members(source: str) -> dict[str, dict[str, Any]]:
    """The image members of a tar shard by image id (listed once per shard)."""
    return {item["image_id"]: item for item in list_tar(source)}
