"""Compaction: replace a segment job's many small part files by fewer large ones (``dsseg compact``).

A job that flushes its rows every minute leaves thousands of small ``part-*.parquet`` files; every
reader pays per file. ``compact(output)`` rewrites, per config folder, the parts smaller than
``MIN_FRACTION`` of the target (in name order) into new parts of about ``target_bytes``: each new
part takes the rows of consecutive parts, in their order, until its written size reaches the
target. Rows are kept exactly (no de-duplication; columns an older part lacks read as nulls, as in
``read_results``). The new part is named as the job names parts, ``part_name(config_id,
image_ids)``, so readers find it as any other. Memory holds one input part and one row group.

Each new part replaces its inputs by a commit protocol that holds however compaction ends
(killed, out of disk, a lost node):

1. stream the rows into a hidden temporary file ``.compaction-<random>.parquet.tmp``;
2. write the commit record ``config=<id>/_compaction-<digest>.json`` (atomically) naming the new
   part and the parts it replaces (``_``: dataset readers skip it);
3. rename the temporary file to the new part: from this moment the record is committed;
4. delete the replaced parts, then the record.

``part_files`` (and so ``scan``, ``read_results``, the explorer and the evaluation) honours the
records: while a record's new part exists it hides the parts the record lists; before that the
record is ignored. A dsseg reader thus reads the old parts or the new one, never both, never
neither. A rerun of ``compact`` first finishes every committed record (deletes the listed parts
still there, then the record) and rolls back the others (deletes the record and its temporary
file), then compacts what is left: it is a no-op on a compacted output. ``deduplicate`` and a
shard's ``--overwrite``, which rewrite or delete parts, first finish committed records too
(``finish_compactions``), so a part they delete never lets the parts it replaced come back.

Readers that list the folder themselves (``pq.read_table(OUTPUT/segments)``, Spark, DuckDB) see
both the old and the new rows between steps 3 and 4 of a part (milliseconds to seconds). A reader
holding a list of parts from before a compaction finds some of them gone: ``scan`` and
``read_results`` list again, but the evaluation and the explorer keep their list for their whole
run, so compact between their runs. Run one compaction of an output at a time, and none while a
job's final de-duplication (its last step) runs on it: that rewrites parts in place. Jobs that are
still writing parts are fine: their new parts are not touched.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dsseg.errors import ConfigError
from dsseg.io.files import remove_file, write_json
from dsseg.io.records import RECORD_PREFIX, finish_record, is_record_name, read_record
from dsseg.io.results import PARTITION_PREFIX, SEGMENTS_DIR, part_infos, part_name, part_shard
from dsseg.io.schema import OUTPUT_SCHEMA
from dsseg.io.sources import resolve

DEFAULT_TARGET_BYTES = 128 * 1024**2
# A part of at least this share of the target counts as compacted and is left alone: a new part
# closes at about the target, and a rerun must not merge two of them.
MIN_FRACTION = 0.75
ROW_GROUP_BYTES = 64 * 1024**2  # in-memory (Arrow) bytes buffered per row group of a new part
TEMPORARY_PREFIX = ".compaction-"


@dataclass
class Group:
    """The parts streamed into one new part: their names (in order), their rows' image ids, their
    bytes on disk; ``written``: the new part's size in bytes."""

    names: list[str] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)
    bytes_in: int = 0
    written: int = 0
    shard: tuple[int, int] | None = None


@dataclass
class SizeModel:
    """How big a new part gets: Parquet bytes written per in-memory Arrow byte so far, and the
    footer bytes per row group (the largest an input part's footer holds per row group)."""

    parquet: int = 0
    arrow: int = 0
    footer_per_row_group: int = 0

    def estimate(self, written: int, row_groups: int, buffered: int) -> float:
        """Estimated bytes of a part closed now: ``written`` bytes in ``row_groups`` row groups
        so far, ``buffered`` Arrow bytes more as one row group (if any), and its footer."""
        ratio = self.parquet / self.arrow if self.arrow else 1.0
        return written + ratio * buffered + (row_groups + (buffered > 0)) * self.footer_per_row_group


def compact(output: str, target_bytes: int = DEFAULT_TARGET_BYTES, config_ids: Sequence[str] | None = None) -> dict:
    """Compact the parts of ``output`` (a segment job's folder or URI), of every config or only of
    ``config_ids``, into parts of about ``target_bytes`` (bytes on disk). Returns a JSON-ready
    summary: files and bytes before and after, rows rewritten, new parts (groups), records of an
    earlier compaction finished or rolled back, seconds.

    ``FileNotFoundError`` for a missing output or ``segments/`` folder; ``ConfigError`` for a
    target ≤ 0 or a config without a folder."""
    start = time.perf_counter()
    if target_bytes <= 0:
        raise ConfigError("target_bytes", f"must be > 0; got {target_bytes}")
    fs, folders = config_folders(output, config_ids)
    finished = rolled_back = 0
    for folder in folders.values():
        done, undone = recover(fs, folder)
        finished, rolled_back = finished + done, rolled_back + undone
    parts = part_infos(output, list(folders))
    summary: dict[str, Any] = {
        "output": output,
        "target_bytes": target_bytes,
        "configs": len(folders),
        "files_before": len(parts),
        "bytes_before": sum(info.size for info in parts),
        "rows": 0,
        "groups": 0,
        "files_replaced": 0,
        "bytes_replaced": 0,
        "bytes_written": 0,
    }
    model = SizeModel()
    for config_id, folder in folders.items():
        inside = [info for info in parts if info.path.rsplit("/", 1)[0] == folder]
        for group in compact_folder(fs, folder, config_id, inside, target_bytes, model):
            summary["groups"] += 1
            summary["rows"] += len(group.image_ids)
            summary["files_replaced"] += len(group.names)
            summary["bytes_replaced"] += group.bytes_in
            summary["bytes_written"] += group.written
    summary["files_after"] = summary["files_before"] - summary["files_replaced"] + summary["groups"]
    summary["bytes_after"] = summary["bytes_before"] - summary["bytes_replaced"] + summary["bytes_written"]
    summary["records_finished"], summary["records_rolled_back"] = finished, rolled_back
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def config_folders(output: str, config_ids: Sequence[str] | None) -> tuple[pafs.FileSystem, dict[str, str]]:
    """The file system of ``output`` and {config_id: its folder under ``segments/``}, sorted by id;
    only ``config_ids`` when given (each must have a folder)."""
    fs, root = resolve(output)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no such output folder: {output}")
    segments = f"{root.rstrip('/')}/{SEGMENTS_DIR}"
    if fs.get_file_info(segments).type != pafs.FileType.Directory:
        raise FileNotFoundError(
            f"{output} has no {SEGMENTS_DIR}/ folder: not a segment job's output (an evaluation's rows are in OUTPUT/run)"
        )
    folders = {
        info.base_name[len(PARTITION_PREFIX) :]: info.path
        for info in fs.get_file_info(pafs.FileSelector(segments))
        if info.type == pafs.FileType.Directory and info.base_name.startswith(PARTITION_PREFIX)
    }
    if config_ids is not None:
        unknown = sorted(set(config_ids) - set(folders))
        if unknown:
            raise ConfigError("config", f"no results of config {', '.join(unknown)} under {output}/{SEGMENTS_DIR}")
        folders = {config_id: folders[config_id] for config_id in config_ids}
    return fs, dict(sorted(folders.items()))


def recover(fs: pafs.FileSystem, folder: str) -> tuple[int, int]:
    """Settle what a killed compaction left in the config ``folder``: finish each committed
    record, roll back the others, delete compaction temporaries. Returns (finished, rolled back)."""
    finished = rolled_back = 0
    for info in fs.get_file_info(pafs.FileSelector(folder)):
        if info.type == pafs.FileType.File and is_record_name(info.base_name):
            if settle(fs, info.path):
                finished += 1
            else:
                rolled_back += 1
    for info in fs.get_file_info(pafs.FileSelector(folder)):  # a killed writer's, before its record
        if info.type == pafs.FileType.File and info.base_name.startswith(TEMPORARY_PREFIX):
            remove_file(fs, info.path)
    return finished, rolled_back


def settle(fs: pafs.FileSystem, record_path: str) -> bool:
    """Finish the compaction a record commits (``finish_record``: its new part exists; True), or
    roll it back: delete its temporary file, then the record (False)."""
    if finish_record(fs, record_path):
        return True
    record = read_record(fs, record_path)
    if record.get("temporary"):
        remove_file(fs, f"{record_path.rsplit('/', 1)[0]}/{record['temporary']}")
    remove_file(fs, record_path)
    return False


def compact_folder(
    fs: pafs.FileSystem,
    folder: str,
    config_id: str,
    parts: Sequence[pafs.FileInfo],
    target_bytes: int,
    model: SizeModel,
) -> list[Group]:
    """Compact one config ``folder`` whose parts (sorted) are ``parts``; returns the groups
    committed. Parts of at least ``MIN_FRACTION`` × ``target_bytes`` stay as they are. Parts of
    one shard (``part_shard``) merge only with each other, and the new part keeps the shard in
    its name, so a shard's resume still reads only its own parts."""
    names = {info.base_name for info in parts}
    by_shard: dict[tuple[int, int] | None, list[pafs.FileInfo]] = {}
    for info in parts:
        if info.size < MIN_FRACTION * target_bytes:
            by_shard.setdefault(part_shard(info.base_name), []).append(info)
    committed = []
    for shard, small in by_shard.items():
        queue = deque(small)
        while len(queue) >= 2:
            temporary, group = stream_group(fs, folder, queue, target_bytes, model)
            group.shard = shard
            if len(group.names) < 2 or not commit(fs, folder, config_id, temporary, group, names):
                remove_file(fs, temporary)  # one part alone (its schema ended the group) or a name taken
                continue
            names.add(part_name(config_id, group.image_ids, shard))
            committed.append(group)
    return committed


def stream_group(
    fs: pafs.FileSystem, folder: str, queue: deque[pafs.FileInfo], target_bytes: int, model: SizeModel
) -> tuple[str, Group]:
    """Take parts from the front of ``queue`` and write their rows into a new hidden temporary
    file in ``folder`` until its size reaches about ``target_bytes``, or the next part's columns do
    not fit. Returns (the temporary file's path, the group). Memory: one part and one row group."""
    temporary = f"{folder}/{TEMPORARY_PREFIX}{uuid.uuid4().hex[:12]}.parquet.tmp"
    first = _read(fs, queue[0].path, model)
    try:
        with fs.open_output_stream(temporary) as stream:
            with pq.ParquetWriter(stream, _group_schema(first.schema)) as writer:
                group = _fill(fs, queue, first, writer, stream, target_bytes, model)
            group.written = stream.tell()
    except BaseException:
        remove_file(fs, temporary)
        raise
    return temporary, group


def _fill(
    fs: pafs.FileSystem,
    queue: deque[pafs.FileInfo],
    table: pa.Table,
    writer: pq.ParquetWriter,
    stream: pa.NativeFile,
    target_bytes: int,
    model: SizeModel,
) -> Group:
    """``stream_group``'s loop: ``table`` holds the rows of ``queue[0]``. Each part that fits is
    taken from the queue and buffered; a row group is written when the buffer holds
    ``ROW_GROUP_BYTES`` or the part would reach the target with it. The part closes at the target;
    or, after a write the estimate called for, at ``MIN_FRACTION`` of it (the next part might
    overshoot more); else (the estimate was high) it takes more parts."""
    group, buffer, buffered, row_groups = Group(), [], 0, 0
    while True:
        conformed = _conform(table, writer.schema)
        if conformed is None:
            if not group.names:
                queue.popleft()  # fits not even its own group's schema: it stays as it is
            break  # else the next group starts with this part
        info = queue.popleft()
        group.names.append(info.base_name)
        group.image_ids += conformed.column("image_id").to_pylist()
        group.bytes_in += info.size
        buffer.append(conformed)
        buffered += conformed.nbytes
        reaching = model.estimate(stream.tell(), row_groups, buffered) >= target_bytes
        if buffered >= ROW_GROUP_BYTES or reaching:
            _flush(writer, stream, buffer, model)
            buffered, row_groups = 0, row_groups + 1
            if model.estimate(stream.tell(), row_groups, 0) >= (MIN_FRACTION if reaching else 1.0) * target_bytes:
                break
        if not queue:
            break
        table = _read(fs, queue[0].path, model)
    _flush(writer, stream, buffer, model)
    return group


def commit(fs: pafs.FileSystem, folder: str, config_id: str, temporary: str, group: Group, names: set[str]) -> bool:
    """Replace the group's parts in ``folder`` by the new part written to ``temporary``: record,
    rename, delete the replaced parts, delete the record. False (nothing done) when the new part's
    name is taken by another file; ``names``: the folder's part names."""
    new = part_name(config_id, group.image_ids, group.shard)
    if new in names or _exists(fs, f"{folder}/{new}"):
        return False
    digest = hashlib.sha1("\n".join([new, *group.names]).encode()).hexdigest()[:20]
    record_path = f"{folder}/{RECORD_PREFIX}{digest}.json"
    record = {
        "new": new,
        "replaces": group.names,
        "temporary": temporary.rsplit("/", 1)[1],
        "rows": len(group.image_ids),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(fs, record_path, record)
    try:
        fs.move(temporary, f"{folder}/{new}")
    finally:  # committed or not, as the rename went: finish or roll back now
        settle(fs, record_path)
    return True


def _group_schema(schema: pa.Schema) -> pa.Schema:
    """The schema of a new part whose first input has ``schema``: the output schema with whatever
    else that part holds, so older and newer parts both fit; ``schema`` where they conflict."""
    try:
        return pa.unify_schemas([OUTPUT_SCHEMA, schema.remove_metadata()], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):
        return schema.remove_metadata()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table | None:
    """``table`` with ``schema`` (columns it lacks as nulls), or None when it does not fit (a
    column that ``schema`` lacks or whose type differs)."""
    try:
        conformed = pa.concat_tables([schema.empty_table(), table], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):
        return None
    return conformed if conformed.schema.equals(schema) else None


def _flush(writer: pq.ParquetWriter, stream: pa.NativeFile, buffer: list[pa.Table], model: SizeModel) -> None:
    """Write the buffered tables as one row group and empty the buffer; ``model`` learns its size."""
    if not buffer:
        return
    table = pa.concat_tables(buffer)
    before = stream.tell()
    writer.write_table(table, row_group_size=max(1, len(table)))
    model.parquet += stream.tell() - before
    model.arrow += table.nbytes
    buffer.clear()


def _read(fs: pafs.FileSystem, path: str, model: SizeModel) -> pa.Table:
    """The rows of the part ``path``; ``model`` learns its footer bytes per row group."""
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        metadata = parquet.metadata
        footer = metadata.serialized_size // max(1, metadata.num_row_groups)
        model.footer_per_row_group = max(model.footer_per_row_group, footer)
        return parquet.read()


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File
