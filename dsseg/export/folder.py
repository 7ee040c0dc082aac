"""An export's folder, written whole or not at all, and the streamed files inside it.

Everything is written into a hidden sibling of the target (``.<name>.export-<random>.tmp``),
which is renamed into place when the export finished. A target that exists is refused unless
``overwrite``; then the old folder is renamed aside, the new one into place, and the old one
deleted, so the target is at every moment either the old export or the new one, never a mix.
A killed export leaves only its hidden sibling, removed by the next export into the same target
once it is an hour old.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from dsseg.errors import ConfigError
from dsseg.io.files import STALE_SECONDS


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse a target an export may not write: a file, or (without ``overwrite``) a folder
    that is not empty. ``ConfigError`` says what to do."""
    if target.is_file() or (target.is_symlink() and not target.is_dir()):
        raise ConfigError("to", f"{target} is a file; give a folder for the export")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ConfigError(
            "to", f"{target} exists and is not empty; give a new folder, or --overwrite to replace it whole"
        )


@contextmanager
def staged(target: Path, overwrite: bool) -> Iterator[Path]:
    """A hidden empty sibling of ``target`` to write the export into; moved into place when the
    block ends without an error, deleted when it raises."""
    check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    staging = target.parent / f".{target.name}.export-{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace(staging, target, overwrite)


def replace(staging: Path, target: Path, overwrite: bool) -> None:
    """Move ``staging`` to ``target``: an empty target is removed first, an old export (with
    ``overwrite``) renamed aside and deleted after."""
    check_target(target, overwrite)  # again: another export may have finished meanwhile
    old = None
    if target.is_dir():
        if any(target.iterdir()):
            old = target.parent / f".{target.name}.export-{uuid.uuid4().hex[:8]}.old.tmp"
            os.rename(target, old)
        else:
            target.rmdir()
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale(target: Path, older_than: float = STALE_SECONDS) -> int:
    """Delete the hidden export folders of ``target`` that killed exports left (older than
    ``older_than`` seconds: younger ones may belong to an export still running); returns how many."""
    removed = 0
    for path in target.parent.glob(f".{target.name}.export-*.tmp"):
        if path.is_dir() and path.stat().st_mtime < time.time() - older_than:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


class JsonArray:
    """A JSON array written item by item to ``stream`` (never held whole): ``[``, items joined by
    ``,`` (one per line), ``]`` on ``close``."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.count = 0
        stream.write("[")

    def add(self, item: Any) -> None:
        self.stream.write(("\n" if self.count == 0 else ",\n") + json.dumps(item, separators=(",", ":")))
        self.count += 1

    def close(self) -> None:
        self.stream.write("\n]" if self.count else "]")
