"""The output folder of a segment run, and how it is written, scanned and read.

```
OUTPUT/
  config.json                                  the run configuration, one entry per config_id
  segments/config=<config_id>/part-<hash>.parquet
  _SUCCESS                                     every image × config has its row (per shard: _SUCCESS-shard-I-of-N)
```

Part files are written to a hidden temporary name and then moved into place, so a file is
either whole or absent, and a crash never leaves a torn file. A part's name is the hash of
its config and image ids: two runs (or shards) never write the same name unless they wrote
the same rows, so nothing is overwritten with different content. Reading tools skip names
starting with ``.`` or ``_``. ``pq.read_table(OUTPUT/segments)`` reads every config (with a
``config`` partition column beside ``config_id``).

``dsseg compact`` (``dsseg.io.compact``) replaces many small parts by fewer large ones. Each
replacement is committed by a record ``config=<id>/_compaction-<digest>.json`` that names the new
part and the parts it replaces, written before the new part appears. ``part_files`` honours the
records: where a record's new part exists, the parts it replaces are not listed even while they
still exist; where it does not, the record is ignored (``deduplicate`` and ``remove_results``
finish committed records before they rewrite parts). Every dsseg reader lists through
``part_files`` (``scan``, ``read_results``, the explorer, the evaluation), so it reads either the
old parts or the new one, never both and never neither, however a compaction ended. A third-party
reader that lists the folder itself (``pq.read_table(OUTPUT/segments)``) sees both the old and the
new rows between a compaction's rename and its deletions (milliseconds to seconds per new part).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dsseg.errors import ConfigError
from dsseg.io.files import remove_temporaries, write_atomically, write_json
from dsseg.io.records import finish_committed, superseded
from dsseg.io.schema import TRANSIENT_ERRORS
from dsseg.io.sources import in_shard, is_uri, resolve, uri_of

SEGMENTS_DIR = "segments"
CONFIG_FILE = "config.json"
SUCCESS_FILE = "_SUCCESS"
PARTITION_PREFIX = "config="
SCAN_COLUMNS = ["image_id", "config_id", "status", "error"]
PART_SHARD = re.compile(r"part-s(\d+)of(\d+)-")
LISTING_ATTEMPTS = 3  # listings tried when a listed part vanishes while it is read (a compaction replaced it)

T = TypeVar("T")


def _path(output: str, *parts: str) -> tuple[pafs.FileSystem, str]:
    fs, root = resolve(output)
    return fs, "/".join([root.rstrip("/"), *parts])


def success_name(shard: tuple[int, int] | None) -> str:
    return SUCCESS_FILE if shard is None else f"{SUCCESS_FILE}-shard-{shard[0]}-of-{shard[1]}"


def part_name(config_id: str, image_ids: list[str], shard: tuple[int, int] | None = None) -> str:
    """``part-<hash>.parquet``, or ``part-s<I>of<N>-<hash>.parquet`` for rows of shard I of N (so a
    shard's resume reads only its own parts and the unsharded ones)."""
    digest = hashlib.sha1("\n".join([config_id, *sorted(image_ids)]).encode()).hexdigest()[:20]
    tag = f"s{shard[0]}of{shard[1]}-" if shard is not None else ""
    return f"part-{tag}{digest}.parquet"


def part_shard(path: str) -> tuple[int, int] | None:
    """The shard a part file's name says its rows belong to (``part_name``), or None."""
    match = PART_SHARD.match(path.rsplit("/", 1)[-1])
    return (int(match.group(1)), int(match.group(2))) if match else None


def may_hold_shard(path: str, shard: tuple[int, int]) -> bool:
    """False only for part files of another shard of the same split."""
    tag = part_shard(path)
    return tag is None or tag[1] != shard[1] or tag == shard


def write_parts(table: pa.Table, output: str, shard: tuple[int, int] | None = None) -> list[str]:
    """Write ``table`` (rows of the output schema) as one part file per config; returns the paths."""
    written = []
    for config_id in sorted(set(table.column("config_id").to_pylist())):
        rows = table.filter(pc.equal(table.column("config_id"), config_id))
        fs, folder = _path(output, SEGMENTS_DIR, PARTITION_PREFIX + config_id)
        fs.create_dir(folder, recursive=True)
        final = f"{folder}/{part_name(config_id, rows.column('image_id').to_pylist(), shard)}"
        written.append(write_atomically(fs, final, lambda stream, rows=rows: pq.write_table(rows, stream)))
    return written


def is_part_name(name: str) -> bool:
    """Whether a file name is a finished part's (``part-*.parquet``)."""
    return name.startswith("part-") and name.endswith(".parquet")


def segment_files(output: str) -> tuple[pafs.FileSystem, list[pafs.FileInfo]]:
    """The file system of ``output`` and every file under ``OUTPUT/segments`` (one recursive
    listing; none when there is no such folder)."""
    fs, folder = _path(output, SEGMENTS_DIR)
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return fs, []
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    return fs, [info for info in infos if info.type == pafs.FileType.File]


def finish_compactions(output: str) -> int:
    """Finish every committed compaction record under ``OUTPUT/segments`` (what a killed
    compaction left; ``dsseg.io.records``); returns how many."""
    fs, infos = segment_files(output)
    return finish_committed(fs, infos)


def part_infos(output: str, config_ids: Sequence[str] | None = None) -> list[pafs.FileInfo]:
    """``part_files`` with their sizes (``FileInfo``: ``path``, ``size`` in bytes), sorted by path."""
    return relisting(lambda: _part_infos(output, config_ids))  # a record read may find it deleted since


def _part_infos(output: str, config_ids: Sequence[str] | None) -> list[pafs.FileInfo]:
    fs, infos = segment_files(output)
    if config_ids is not None:
        folders = {f"{PARTITION_PREFIX}{config_id}" for config_id in config_ids}
        infos = [info for info in infos if info.path.rsplit("/", 2)[-2] in folders]
    hidden = superseded(fs, infos)
    return sorted(
        (info for info in infos if is_part_name(info.base_name) and info.path not in hidden), key=lambda i: i.path
    )


def part_files(output: str, config_ids: Sequence[str] | None = None) -> list[str]:
    """Every finished part file under ``OUTPUT/segments`` (sorted), or only those of ``config_ids``;
    without the parts a committed compaction replaced (see the module docstring)."""
    return [info.path for info in part_infos(output, config_ids)]


def part_uris(output: str, config_ids: Sequence[str] | None = None) -> list[str]:
    """``part_files`` as paths or URIs that ``read_part`` opens from anywhere (e.g. Ray workers)."""
    return [uri_of(output, path) for path in part_files(output, config_ids)]


def relisting(read: Callable[[], T]) -> T:
    """``read()``, which lists files under ``OUTPUT/segments`` and reads them; listed and read
    again (``LISTING_ATTEMPTS`` tries in all) when a listed file vanished meanwhile (a compaction
    replaced it)."""
    for _ in range(LISTING_ATTEMPTS - 1):
        try:
            return read()
        except FileNotFoundError:
            continue
    return read()


def scan(output: str) -> pa.Table:
    """``image_id, config_id, status, error, file`` of every row written so far (files in
    ``part_files`` order, each file's rows in its order)."""
    return relisting(lambda: _scan(output))


def _scan(output: str) -> pa.Table:
    fs, _ = resolve(output)
    tables = []
    for path in part_files(output):
        with fs.open_input_file(path) as handle:
            table = pq.read_table(handle, columns=SCAN_COLUMNS)
        tables.append(table.append_column("file", pa.array([path] * len(table), pa.string())))
    schema = pa.schema([(name, pa.string()) for name in [*SCAN_COLUMNS, "file"]])
    return pa.concat_tables(tables) if tables else schema.empty_table()


def done_pairs(scanned: pa.Table, retry_errors: bool = False) -> set[tuple[str, str]]:
    """(config_id, image_id) pairs that already have a row; with ``retry_errors``, error rows
    whose reason may pass on a new try (``TRANSIENT_ERRORS``) do not count."""
    columns = (scanned.column(name).to_pylist() for name in ("config_id", "image_id", "status", "error"))
    return {
        (config, image)
        for config, image, status, error in zip(*columns)
        if not (retry_errors and status != "ok" and (error or "").split(":", 1)[0] in TRANSIENT_ERRORS)
    }


def deduplicate(output: str, scanned: pa.Table) -> int:
    """Drop repeated (config_id, image_id) rows, keeping an ``ok`` row over error rows and else
    the first by file order; returns how many were dropped. ``scanned``: ``scan``'s columns for
    every row of the files it names, or for some of them with a ``row`` column (int, the row's
    place in its file).

    Repeats arise when a cancelled run's last writes land after a new run has planned its work
    (the same computation, so either copy may stay), and when ``--retry-errors`` redoes an image.
    After a compaction both copies may sit in one file, so rows are dropped by their place in
    their file, not by image id. Do not run it beside ``dsseg compact`` on the same output.
    """
    finish_compactions(output)  # a part it deletes must not be a record's new part: the old ones would return
    columns = [scanned.column(name).to_pylist() for name in ("config_id", "image_id", "status", "file")]
    keeper: dict[tuple[str, str], int] = {}
    for row, (config, image, status, _) in enumerate(zip(*columns)):
        kept = keeper.get((config, image))
        if kept is None or (status == "ok" and columns[2][kept] != "ok"):
            keeper[(config, image)] = row
    drop: dict[str, dict[int, str]] = {}  # file → {row number in the file: its image_id}
    place: dict[str, int] = {}
    numbers = scanned.column("row").to_pylist() if "row" in scanned.column_names else None  # a subset's places
    for row, (config, image, _, path) in enumerate(zip(*columns)):
        place[path] = numbers[row] if numbers is not None else place.get(path, -1) + 1
        if keeper[(config, image)] != row:
            drop.setdefault(path, {})[place[path]] = image
    fs, _ = resolve(output)
    for path, rows in drop.items():
        _drop_rows(fs, path, rows)
    return sum(len(rows) for rows in drop.values())


def _drop_rows(fs: pafs.FileSystem, path: str, rows: dict[int, str]) -> None:
    """Rewrite the part ``path`` without ``rows`` ({row number: the image_id it must hold}), or
    delete it when none is left. ``RuntimeError`` when the file no longer holds those rows there."""
    with fs.open_input_file(path) as handle:
        table = pq.read_table(handle)
    ids = table.column("image_id")
    if any(number >= len(table) or ids[number].as_py() != image for number, image in rows.items()):
        raise RuntimeError(f"{path} changed since it was scanned; run again to de-duplicate")
    _keep_rows(fs, path, table, pa.array([number not in rows for number in range(len(table))], pa.bool_()))


def _keep_rows(fs: pafs.FileSystem, path: str, table: pa.Table, keep: pa.BooleanArray) -> None:
    """Rewrite the part ``path`` (whose rows are ``table``) with the rows where ``keep``, atomically;
    delete it when none is kept."""
    kept = table.filter(keep)
    if len(kept):
        write_atomically(fs, path, lambda stream: pq.write_table(kept, stream))
    else:
        fs.delete_file(path)  # no compaction record names it as new: finish_compactions ran first


def read_part(path: str, columns: list[str] | None = None, image_ids: Sequence[str] | None = None) -> pa.Table:
    """The rows of one part file (a path or URI), or only those of ``image_ids``."""
    fs, inside = resolve(path)
    return _read_rows(fs, inside, columns, _id_array(image_ids))


def read_results(
    output: str, config_id: str | None = None, columns: list[str] | None = None, image_ids: Sequence[str] | None = None
) -> pa.Table:
    """The rows of a run (one config, or all; all images, or only ``image_ids``), as written by
    the segment job. Filters file by file, so memory holds one part file beyond the result."""
    fs, _ = resolve(output)
    wanted = _id_array(image_ids)
    configs = None if config_id is None else [config_id]
    tables = relisting(lambda: [_read_rows(fs, path, columns, wanted) for path in part_files(output, configs)])
    if not tables:
        raise FileNotFoundError(
            f"no results under {output}/{SEGMENTS_DIR}" + (f" for config {config_id}" if config_id else "")
        )
    # Permissive: parts written before a column or timing stage existed (caption) read as nulls there.
    return pa.concat_tables(tables, promote_options="permissive")


def _id_array(image_ids: Sequence[str] | None) -> pa.Array | None:
    if image_ids is None or isinstance(image_ids, pa.Array):
        return image_ids
    return pa.array(list(image_ids), pa.string())


def _read_rows(fs: pafs.FileSystem, path: str, columns: list[str] | None, wanted: pa.Array | None) -> pa.Table:
    """``columns`` of a part file on ``fs``, only the rows whose ``image_id`` is in ``wanted`` (if given)."""
    read = columns if columns is None or wanted is None or "image_id" in columns else [*columns, "image_id"]
    with fs.open_input_file(path) as handle:
        table = pq.read_table(handle, columns=read)
    if wanted is not None:
        table = table.filter(pc.is_in(table.column("image_id"), wanted))
    return table if read == columns else table.select(columns)


def read_config(output: str) -> dict[str, Any] | None:
    fs, path = _path(output, CONFIG_FILE)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read().decode())


def recorded_inputs(config: dict[str, Any]) -> list[str]:
    """Every input an output's ``config.json`` says its rows came from."""
    return list(config.get("inputs") or ([config["input"]] if config.get("input") else []))


def _same_input(a: str, b: str) -> bool:
    """Whether two ``input`` strings name the same images (local paths compared absolute)."""
    return a == b or (not is_uri(a) and not is_uri(b) and os.path.abspath(a) == os.path.abspath(b))


def check_output(output: str, input: str, other_inputs: bool = False, other_files: bool = False) -> None:
    """Refuse an output the run should not write into: a file; a folder of other files with no
    dsseg results (unless ``other_files``); results of another input (unless ``other_inputs``: an
    append, or an overwrite). ``ConfigError`` names ``output`` and says what to do."""
    fs, root = resolve(output)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise ConfigError("output", f"{output} is a file; give a folder (or a URI) for the results")
    if info.type != pafs.FileType.Directory:
        return
    previous = read_config(output)
    if previous is None:
        names = [entry.base_name for entry in fs.get_file_info(pafs.FileSelector(root))]
        foreign = sorted(n for n in names if n != SEGMENTS_DIR and not n.startswith((SUCCESS_FILE, ".")))
        if foreign and not other_files:
            raise ConfigError(
                "output",
                f"{output} holds other files ({', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''}) and no dsseg "
                "results: give a new or empty folder, or append (--append) to write into it anyway",
            )
        return
    inputs = recorded_inputs(previous)
    if inputs and not any(_same_input(input, seen) for seen in inputs) and not other_inputs:
        raise ConfigError(
            "output",
            f"{output} holds the results of input {', '.join(inputs)}; give another output for {input!r}, or append (--append) to add "
            "its images to these results",
        )


def write_config(output: str, record: dict[str, Any]) -> None:
    """Write ``config.json``, keeping the config entries and inputs of earlier runs into the same output."""
    previous = read_config(output) or {}
    configs = {entry["config_id"]: entry for entry in previous.get("configs", [])}
    configs.update({entry["config_id"]: entry for entry in record["configs"]})
    inputs = recorded_inputs(previous)
    inputs += [record["input"]] if not any(_same_input(record["input"], seen) for seen in inputs) else []
    record = {
        **record,
        "inputs": inputs,
        "configs": list(configs.values()),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    fs, path = _path(output, CONFIG_FILE)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    write_json(fs, path, record)


def mark_success(output: str, shard: tuple[int, int] | None, summary: dict[str, Any]) -> None:
    """Write ``_SUCCESS`` (or the shard's), atomically: its presence means the run is complete."""
    fs, path = _path(output, success_name(shard))
    write_json(fs, path, summary)


def remove_orphaned_temporaries(output: str, written_before: float) -> int:
    """Delete the temporary part files (``.part-*.tmp``) under ``OUTPUT/segments`` last written
    before the Unix time ``written_before``: those of writers killed with an earlier run."""
    fs, folder = _path(output, SEGMENTS_DIR)
    return remove_temporaries(fs, folder, written_before)


def clear_success(output: str, shard: tuple[int, int] | None) -> None:
    fs, path = _path(output, success_name(shard))
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def remove_results(output: str, shard: tuple[int, int] | None = None) -> None:
    """``--overwrite``: delete segments/, config.json and success markers (nothing else); with a
    shard, only that shard's rows and success marker, so other shards' results stay (a part that
    ``dsseg compact`` merged from several shards is rewritten with the other shards' rows)."""
    fs, root = resolve(output)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return
    if shard is not None:
        finish_compactions(output)  # as in deduplicate
        scanned = scan(output)
        ids, files = scanned.column("image_id").to_pylist(), scanned.column("file").to_pylist()
        mixed = {path for image_id, path in zip(ids, files) if not in_shard(image_id, shard)}
        for path in sorted({path for image_id, path in zip(ids, files) if in_shard(image_id, shard)}):
            if path in mixed:  # also holds other shards' rows (a compacted part): keep those
                _remove_shard_rows(fs, path, shard)
            else:
                fs.delete_file(path)
        clear_success(output, shard)
        return
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.base_name == SEGMENTS_DIR and info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)
        elif info.base_name == CONFIG_FILE or info.base_name.startswith(SUCCESS_FILE):
            fs.delete_file(info.path)


def _remove_shard_rows(fs: pafs.FileSystem, path: str, shard: tuple[int, int]) -> None:
    """Rewrite the part ``path`` without its rows of ``shard`` (delete it when none is left)."""
    with fs.open_input_file(path) as handle:
        table = pq.read_table(handle)
    keep = [not in_shard(image_id, shard) for image_id in table.column("image_id").to_pylist()]
    _keep_rows(fs, path, table, pa.array(keep, pa.bool_()))
