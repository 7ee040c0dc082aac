"""Compaction commit records (``_compaction-<digest>.json`` beside the parts of one config):
a record names a new part and the parts it replaces; once the new part exists the compaction is
committed, and readers hide the replaced parts (``superseded``) until they are deleted
(``finish_record``). Written by ``dsseg.io.compact``; read by every listing in ``dsseg.io.results``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow.fs as pafs

from dsseg.io.files import remove_file

RECORD_PREFIX = "_compaction-"  # a compaction's commit record: _compaction-<digest>.json


def is_record_name(name: str) -> bool:
    """Whether a file name is a compaction's commit record (``_compaction-*.json``)."""
    return name.startswith(RECORD_PREFIX) and name.endswith(".json")


def read_record(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    """A compaction record: ``{"new": NAME, "replaces": [NAME, ...], ...}``, names of files in the
    record's own folder. ``ValueError`` names a record that is not one (records are written whole)."""
    with fs.open_input_stream(path) as stream:
        data = stream.read()
    try:
        record = json.loads(data.decode())
        new, replaces = record["new"], record["replaces"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a compaction record ({error}); delete it if no dsseg compact wrote it") from None
    if not isinstance(new, str) or not isinstance(replaces, list):
        raise ValueError(f"{path}: not a compaction record (new: a name, replaces: a list of names)")
    return record


def superseded(fs: pafs.FileSystem, infos: Sequence[pafs.FileInfo]) -> set[str]:
    """Paths among ``infos`` (one listing) that a committed compaction replaced: the parts its
    record lists, where the record's new part is in the listing too. Reads only the records listed
    (normally none)."""
    present = {info.path for info in infos}
    hidden: set[str] = set()
    for info in infos:
        if not is_record_name(info.base_name):
            continue
        folder = info.path.rsplit("/", 1)[0]
        record = read_record(fs, info.path)
        if f"{folder}/{record['new']}" in present:
            hidden.update(f"{folder}/{name}" for name in record["replaces"] if name != record["new"])
    return hidden


def finish_record(fs: pafs.FileSystem, record_path: str) -> bool:
    """Finish the compaction that a record commits: when its new part exists, delete the parts it
    replaces that are still there, then the record; True. False (nothing done) when the new part
    does not exist (not committed; ``dsseg.io.compact`` rolls it back)."""
    folder = record_path.rsplit("/", 1)[0]
    record = read_record(fs, record_path)
    if fs.get_file_info(f"{folder}/{record['new']}").type != pafs.FileType.File:
        return False
    for name in record["replaces"]:
        if name != record["new"]:
            remove_file(fs, f"{folder}/{name}")
    remove_file(fs, record_path)
    return True


def finish_committed(fs: pafs.FileSystem, infos: Sequence[pafs.FileInfo]) -> int:
    """Finish every committed record among ``infos`` (one listing), so that no part a record hides
    is left to come back when its new part is rewritten or deleted; returns how many. Safe beside
    a running compaction: it touches only committed records."""
    records = [info.path for info in infos if is_record_name(info.base_name)]
    finished = 0
    for path in records:
        try:
            finished += finish_record(fs, path)
        except FileNotFoundError:  # finished meanwhile
            continue
    return finished
