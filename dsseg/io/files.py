"""Atomic writes: every file dsseg writes is whole or absent, on local disks and object stores.

``write_atomically(fs, path, write)`` hands ``write`` a stream on a temporary sibling
(``.<name>.<random>.tmp``) and moves it into place only when ``write`` returns; a failed write
removes it. ``remove_stale_temporaries`` clears the ones a killed writer left behind.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO, Any

import pyarrow.fs as pafs

STALE_SECONDS = 3600  # a temporary file this old belongs to a writer that died


def tree_stem(image_id: str) -> str:
    """An image id without its extension, folders kept (``horses/horse001.jpg`` → ``horses/horse001``)."""
    return PurePosixPath(image_id).with_suffix("").as_posix()


def file_stem(image_id: str) -> str:
    """A flat file name for an image id: ``tree_stem`` with folders → ``__`` (``horses__horse001``)."""
    return tree_stem(image_id).replace("/", "__")


def write_atomically(fs: pafs.FileSystem, path: str, write: Callable[[IO[bytes]], Any]) -> str:
    """``write(stream)`` into a temporary sibling of ``path`` on ``fs``, then move it to ``path``."""
    folder, name = path.rsplit("/", 1)
    temporary = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with fs.open_output_stream(temporary) as stream:
            write(stream)
        fs.move(temporary, path)
    except BaseException:
        if fs.get_file_info(temporary).type == pafs.FileType.File:
            fs.delete_file(temporary)
        raise
    return path


def remove_file(fs: pafs.FileSystem, path: str) -> bool:
    """Delete the file ``path`` on ``fs`` if it is there; returns whether it was."""
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        return False
    return True


def write_file(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """``write_atomically`` for a local file (its folder created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(pafs.LocalFileSystem(), str(path.absolute()), write)
    return path


def write_json(fs: pafs.FileSystem, path: str, document: Any) -> str:
    """``document`` as indented JSON (non-JSON values as strings), atomically."""
    data = json.dumps(document, indent=2, default=str).encode()
    return write_atomically(fs, path, lambda stream: stream.write(data))


def remove_temporaries(fs: pafs.FileSystem, folder: str, written_before: float) -> int:
    """Delete the ``.*.tmp`` files under ``folder`` on ``fs`` last written before the Unix time
    ``written_before`` (their writers died); returns how many."""
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return 0
    removed = 0
    for info in fs.get_file_info(pafs.FileSelector(folder, recursive=True)):
        is_temporary = (
            info.type == pafs.FileType.File and info.base_name.startswith(".") and info.base_name.endswith(".tmp")
        )
        if is_temporary and info.mtime is not None and info.mtime.timestamp() < written_before:
            fs.delete_file(info.path)
            removed += 1
    return removed


def remove_stale_temporaries(folder: Path, older_than: float = STALE_SECONDS) -> int:
    """Delete the ``.*.tmp`` files that killed writers left under the local ``folder`` (younger
    ones may belong to a writer still running); returns how many."""
    return remove_temporaries(pafs.LocalFileSystem(), str(folder.absolute()), time.time() - older_than)
