"""The segment job's plan as a stream: which (image, config) pairs still need a row.

Nothing here holds the input or the output on the driver:

- the items come from ``dsseg.io.sources``: images and tar members listed on the driver (one
  entry per file), or manifests read chunk by chunk (a Parquet row group, a JSON-lines file) by
  Ray tasks; ``--shard i/n`` is a filter inside those tasks, ``--limit N`` a bounded read;
- the rows already written become a ``DoneIndex``: a sorted array of 16-byte keys
  (BLAKE2b-128 of config id and image id, one per row), built by Ray tasks from the part files
  and kept in the object store, where each node maps it once for all its plan tasks (16 bytes
  per written row: 1.6 GB at 10⁸ rows);
- a plan task looks its items up in the index (binary search) and passes on each item with the
  config ids it still lacks; ``PlanTally`` (a small actor) keeps the counts of the plan. Items
  the driver holds anyway are looked up in one task (``plan_items``), so the driver knows
  before any model starts how many are left, and a run with nothing to do starts none.

Why not Ray Data's ``checkpoint`` (beta in 2.60): it keys on one id column, while a dsseg run
resumes (image, config) pairs (a new config on old images redoes only that config); it keeps
its own record of what is written beside the part files, which could disagree with them, while
the part files are the truth here; and it only works with Ray Data's ``write_*`` sinks. Its
filter is the same idea as this one (a sorted id array in the object store, binary search in
each read task). Why not a Ray Data ``join``: it is an all-to-all shuffle, so no row reaches
the model before the whole input has been read and shuffled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dsseg.io.results import SCAN_COLUMNS, deduplicate, may_hold_shard, part_uris
from dsseg.io.schema import TRANSIENT_ERRORS
from dsseg.io.sources import (
    ITEM_SCHEMA,
    ManifestChunk,
    manifest_chunks,
    read_manifest_chunk,
    resolve,
    shard_mask,
)

KEY_DTYPE = np.dtype("S16")  # a BLAKE2b-128 digest of config id + NUL + image id
PARTS_PER_INDEX_TASK = 256  # part files one index task reads
ITEM_BLOCK_ROWS = 256  # rows per block of a listed input: parallel decoding, cheap scheduling
TODO_SCHEMA = ITEM_SCHEMA.append(pa.field("configs", pa.list_(pa.string())))


def pair_keys(config_id: str, image_ids: Sequence[str]) -> np.ndarray:
    """``(N,) S16``: the key of each (config, image) pair, in ``image_ids``' order."""
    prefix = config_id.encode() + b"\0"
    digests = b"".join(hashlib.blake2b(prefix + i.encode(), digest_size=16).digest() for i in image_ids)
    return np.frombuffer(digests, dtype=KEY_DTYPE)


def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``(N,) bool``: which ``keys`` occur in ``sorted_keys`` (sorted ``S16``)."""
    if not len(sorted_keys) or not len(keys):
        return np.zeros(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[at] == keys


def part_keys(uris: Sequence[str], skip_transient_errors: bool) -> np.ndarray:
    """Sorted keys of the rows of part files ``uris`` (with ``skip_transient_errors``: not of error
    rows whose reason may pass on a retry, ``TRANSIENT_ERRORS``)."""
    keys = []
    for uri in uris:
        fs, path = resolve(uri)
        with fs.open_input_file(path) as handle:
            table = pq.read_table(handle, columns=["image_id", "config_id", "status", "error"])
        if skip_transient_errors:
            codes = [(error or "").split(":", 1)[0] for error in table.column("error").to_pylist()]
            retried = [
                status != "ok" and code in TRANSIENT_ERRORS
                for status, code in zip(table.column("status").to_pylist(), codes)
            ]
            table = table.filter(pc.invert(pa.array(retried, pa.bool_())))
        for config_id in pc.unique(table.column("config_id")).to_pylist():
            ids = table.filter(pc.equal(table.column("config_id"), config_id)).column("image_id").to_pylist()
            keys.append(pair_keys(config_id, ids))
    return np.sort(np.concatenate(keys)) if keys else np.empty(0, KEY_DTYPE)


def merge_keys(*parts: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(sorted unique keys, the keys that occur more than once, how many unique) of key arrays."""
    keys = np.sort(np.concatenate(parts)) if parts else np.empty(0, KEY_DTYPE)
    repeated = keys[1:][keys[1:] == keys[:-1]]
    unique = np.unique(keys)
    return unique, np.unique(repeated), len(unique)


@dataclass(frozen=True)
class DoneIndex:
    """The rows written so far, as a sorted key array in the object store.

    ``keys``: ObjectRef of ``(M,) S16`` sorted unique keys. ``rows``: M. ``repeated``: the keys
    with more than one row (a handful: rows a cancelled run's late writes or ``--retry-errors``
    duplicated), read by the deduplication after a run.
    """

    keys: Any
    rows: int
    repeated: np.ndarray


def index_uris(output: str, config_ids: Sequence[str], shard: tuple[int, int] | None) -> list[str]:
    """The part files that may hold rows of ``config_ids`` (and of ``shard``: not other shards')."""
    uris = part_uris(output, config_ids)
    return uris if shard is None else [uri for uri in uris if may_hold_shard(uri, shard)]


def build_done_index(
    output: str, config_ids: Sequence[str], shard: tuple[int, int] | None = None, skip_transient_errors: bool = False
) -> DoneIndex | None:
    """The index of ``output``'s rows of ``config_ids``, built by Ray tasks (the driver holds the
    part file names and the repeated keys); None when there are none."""
    import ray

    uris = index_uris(output, config_ids, shard)
    if not uris:
        return None
    read = ray.remote(part_keys)
    chunks = [
        read.remote(uris[i : i + PARTS_PER_INDEX_TASK], skip_transient_errors)
        for i in range(0, len(uris), PARTS_PER_INDEX_TASK)
    ]
    keys, repeated, rows = ray.remote(num_returns=3)(merge_keys).remote(*chunks)
    return DoneIndex(keys, ray.get(rows), ray.get(repeated))


def rows_with_keys(uris: Sequence[str], keys: np.ndarray) -> pa.Table:
    """``image_id, config_id, status, error, row, file`` of the rows of part files ``uris`` whose
    (config, image) key is in ``keys`` (sorted); ``row``: the row's place in its file."""
    found = []
    for uri in uris:
        fs, path = resolve(uri)
        with fs.open_input_file(path) as handle:
            table = pq.read_table(handle, columns=SCAN_COLUMNS)
        hit = np.zeros(len(table), dtype=bool)
        for config_id in pc.unique(table.column("config_id")).to_pylist():
            rows = np.flatnonzero(pc.equal(table.column("config_id"), config_id).to_numpy(zero_copy_only=False))
            ids = table.column("image_id").take(pa.array(rows)).to_pylist()
            hit[rows] = contains(keys, pair_keys(config_id, ids))
        if hit.any():
            table = table.append_column("row", pa.array(np.arange(len(table)), pa.int64())).filter(pa.array(hit))
            found.append(table.append_column("file", pa.array([path] * len(table), pa.string())))
    schema = pa.schema([*((name, pa.string()) for name in SCAN_COLUMNS), ("row", pa.int64()), ("file", pa.string())])
    return pa.concat_tables(found) if found else schema.empty_table()


def remove_repeated_rows(
    output: str, config_ids: Sequence[str], shard: tuple[int, int] | None = None, index: DoneIndex | None = None
) -> int:
    """Keep one row per (config, image) of ``config_ids`` (an ``ok`` row over error rows), found
    through ``index`` (an index of every row of the output as it stands, e.g. the plan's when the
    run wrote nothing; by default a fresh one); returns how many rows were dropped. Repeats come
    from a cancelled run's late writes, ``--retry-errors`` and ids a streamed manifest repeats."""
    import ray

    index = index or build_done_index(output, config_ids, shard)
    if index is None or not len(index.repeated):
        return 0
    uris = index_uris(output, config_ids, shard)
    find = ray.remote(rows_with_keys)
    tables = ray.get(
        [
            find.remote(uris[i : i + PARTS_PER_INDEX_TASK], index.repeated)
            for i in range(0, len(uris), PARTS_PER_INDEX_TASK)
        ]
    )
    return deduplicate(output, pa.concat_tables(tables))


class PlanTally:
    """Counts of the plan, kept as the plan tasks report them (a Ray actor; idempotent per block,
    so a retried task is not counted twice)."""

    def __init__(self) -> None:
        self.blocks: dict[str, tuple[int, int, int]] = {}

    def record(self, block: str, images: int, todo_images: int, todo_pairs: int) -> None:
        self.blocks[block] = (images, todo_images, todo_pairs)

    def totals(self) -> dict[str, int]:
        """``images`` in scope, ``todo_images`` with a config to do, ``todo_pairs`` rows to write."""
        sums = np.array(list(self.blocks.values()) or [(0, 0, 0)], dtype=np.int64).sum(axis=0)
        return {"images": int(sums[0]), "todo_images": int(sums[1]), "todo_pairs": int(sums[2])}


def missing_configs(items: pa.Table, config_ids: Sequence[str], done_keys: np.ndarray | None) -> pa.Table:
    """ITEM rows → TODO rows: each item with the ``config_ids`` it has no row for (in their
    order); items with none are dropped."""
    ids = items.column("image_id").to_pylist()
    if done_keys is None or not len(done_keys):
        lacking = np.ones((len(config_ids), len(ids)), dtype=bool)
    else:
        lacking = np.stack([~contains(done_keys, pair_keys(cid, ids)) for cid in config_ids])
    configs = [[cid for cid, lacks in zip(config_ids, column) if lacks] for column in lacking.T]
    keep = lacking.any(axis=0)
    table = items.append_column("configs", pa.array(configs, pa.list_(pa.string())))
    return table.filter(pa.array(keep)).cast(TODO_SCHEMA)


def block_name(items: pa.Table) -> str:
    """A name for a block of items that a retry of the same task repeats."""
    ids = items.column("image_id")
    ends = f"{ids[0].as_py()}\0{ids[-1].as_py()}\0{len(ids)}" if len(ids) else "empty"
    return hashlib.sha1(ends.encode()).hexdigest()


class PlanStage:
    """The plan's Ray Data step for streamed manifests: a manifest chunk → its TODO rows.

    ``shard``: keep only that shard's items. ``index``: the ``DoneIndex`` keys (ObjectRef) or None. ``tally``: a ``PlanTally``
    actor handle.
    """

    def __init__(self, config_ids: Sequence[str], shard: tuple[int, int] | None, index: Any, tally: Any) -> None:
        self.config_ids = list(config_ids)
        self.shard = shard
        self.index = index
        self.tally = tally

    def todo(self, items: pa.Table) -> pa.Table:
        import ray

        if self.shard is not None:
            items = items.filter(shard_mask(items.column("image_id"), self.shard))
        done = ray.get(self.index) if self.index is not None else None
        todo = missing_configs(items, self.config_ids, done)
        pairs = sum(len(configs) for configs in todo.column("configs").to_pylist())
        ray.get(self.tally.record.remote(block_name(items), len(items), len(todo), pairs))
        return todo

    def items_of_chunks(self, chunks: pa.Table) -> Iterator[pa.Table]:
        """Ray Data ``map_batches`` over manifest chunks (``source``, ``row_group``): their TODO rows."""
        for source, row_group in zip(chunks.column("source").to_pylist(), chunks.column("row_group").to_pylist()):
            for items in read_manifest_chunk(ManifestChunk(source, row_group)):
                todo = self.todo(items)
                if len(todo):
                    yield todo


def plan_items(items: pa.Table, config_ids: Sequence[str], index: DoneIndex | None) -> tuple[pa.Table, dict[str, int]]:
    """The plan of items the driver holds anyway (a listing, or a manifest under ``--limit``,
    already sharded and limited): (their TODO rows, the plan's counts as ``PlanTally.totals``).
    The lookup runs in one Ray task, where the index is mapped, so the driver never holds the
    index (it may hold other inputs' rows); the TODO rows are at most the items."""
    import ray

    if index is None:
        todo = missing_configs(items, config_ids, None)
    else:
        todo = ray.get(ray.remote(missing_configs).remote(items, list(config_ids), index.keys))
    pairs = sum(len(configs) for configs in todo.column("configs").to_pylist())
    return todo, {"images": len(items), "todo_images": len(todo), "todo_pairs": pairs}


def dataset_of_rows(rows: pa.Table):
    """A Ray Dataset of TODO ``rows`` held on the driver, in blocks of ``ITEM_BLOCK_ROWS``."""
    import ray

    return ray.data.from_arrow([rows.slice(start, ITEM_BLOCK_ROWS) for start in range(0, len(rows), ITEM_BLOCK_ROWS)])


def todo_dataset(
    manifests: Sequence[str],
    config_ids: Sequence[str],
    index: DoneIndex | None,
    tally: Any,
    shard: tuple[int, int] | None,
):
    """The Ray Dataset of TODO rows of streamed ``manifests``: their chunks read, sharded and
    looked up by plan tasks, which report their counts to ``tally`` (a ``PlanTally`` actor)."""
    import ray

    keys = index.keys if index is not None else None
    chunks = [chunk for source in manifests for chunk in manifest_chunks(source)]
    table = pa.table(
        {
            "source": pa.array([chunk.source for chunk in chunks], pa.string()),
            "row_group": pa.array([chunk.row_group for chunk in chunks], pa.int64()),
        }
    )
    stage = PlanStage(config_ids, shard, keys, tally)
    descriptors = ray.data.from_arrow([table.slice(i, 1) for i in range(len(table))])
    # One chunk at a time: the plan only has to stay ahead of the model, and must not take
    # the CPUs from decoding while it reads ahead. Plan tasks take no CPU slot: a task paused
    # by backpressure must not keep decoding from a CPU.
    return descriptors.map_batches(
        stage.items_of_chunks,
        batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=1),
        batch_format="pyarrow",
        num_cpus=0,
    )
