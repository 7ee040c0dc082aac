"""Atomic writes: whole or absent, and nothing left behind by a failed writer."""

from __future__ import annotations

import os
import time

import pyarrow.fs as pafs
import pytest

from dsseg.io.files import remove_stale_temporaries, write_atomically, write_file, write_json


def test_a_file_appears_only_when_its_writer_finishes(tmp_path):
    target = tmp_path / "deep" / "out.bin"
    write_file(target, lambda stream: stream.write(b"whole"))
    assert target.read_bytes() == b"whole"

    def half_then_fail(stream):
        stream.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_file(target, half_then_fail)
    assert target.read_bytes() == b"whole"  # the old file stays
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]  # no temporary left
    with pytest.raises(OSError):
        write_atomically(pafs.LocalFileSystem(), str(tmp_path / "new.bin"), half_then_fail)
    assert not (tmp_path / "new.bin").exists()
    write_json(pafs.LocalFileSystem(), str(tmp_path / "doc.json"), {"a": 1})
    assert (tmp_path / "doc.json").read_text() == '{\n  "a": 1\n}'


def test_only_old_temporaries_are_cleared(tmp_path):
    old, young = tmp_path / ".a.png.1.tmp", tmp_path / "sub" / ".b.png.2.tmp"
    young.parent.mkdir()
    for path in (old, young):
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 7200,) * 2)
    assert remove_stale_temporaries(tmp_path) == 1
    assert not old.exists() and young.exists()  # a writer may still be busy with the young one
