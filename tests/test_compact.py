"""dsseg compact: small parts merged into large ones, rows kept exactly, and a commit protocol under
which readers see the old parts or the new one, never both or neither, however compaction ended."""

from __future__ import annotations

import json
import shutil
from collections import Counter, deque
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from helpers import output_rows

from dsseg.benchmark.explore import synthetic_output
from dsseg.commands import main
from dsseg.io.compact import MIN_FRACTION, SizeModel, compact, stream_group
from dsseg.io.files import write_json
from dsseg.io.results import (
    deduplicate,
    done_pairs,
    part_files,
    part_infos,
    part_name,
    read_results,
    remove_results,
    scan,
    write_parts,
)
from dsseg.io.sources import in_shard

ORDER = [("config_id", "ascending"), ("image_id", "ascending"), ("status", "ascending")]
TARGET = 20_000  # bytes: a few 16-row synthetic parts (about 9.7 kB each)


rows = output_rows


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A job output of 2 configs × 400 rows in 16-row parts (50 files); copy it before changing it."""
    folder = tmp_path_factory.mktemp("synthetic")
    synthetic_output(folder, [("image.jpg", "missing.jpg", 64, 64)], 400, rows_per_file=16)
    return folder / "run"


@pytest.fixture
def output(synthetic, tmp_path) -> str:
    shutil.copytree(synthetic, tmp_path / "run")
    return str(tmp_path / "run")


def everything(output: str) -> pa.Table:
    return read_results(output).sort_by(ORDER)


def assert_each_row_once(output: str, expected: pa.Table) -> None:
    """Readers see exactly ``expected``'s rows: none twice, none missing."""
    assert everything(output).equals(expected)
    scanned = scan(output)
    pairs = Counter(zip(scanned.column("config_id").to_pylist(), scanned.column("image_id").to_pylist()))
    assert len(scanned) == len(expected) and max(pairs.values()) == 1
    assert len(done_pairs(scanned)) == len(expected)


def stamps(infos: list[pafs.FileInfo]) -> list[tuple[str, int, int]]:
    return [(info.path, info.size, info.mtime_ns) for info in infos]


def files_in(output: str) -> dict[str, list[str]]:
    """Every file name (hidden ones too) per config folder."""
    return {f.name: sorted(p.name for p in f.iterdir()) for f in sorted((Path(output) / "segments").iterdir())}


def test_compaction_keeps_every_row_in_fewer_files_of_about_the_target(output):
    before, parts = everything(output), part_infos(output)
    summary = compact(output, TARGET)
    after = part_infos(output)
    assert_each_row_once(output, before)
    assert summary["files_before"] == len(parts) == 50 and summary["files_after"] == len(after) < 10
    assert summary["bytes_after"] == sum(i.size for i in after) and summary["rows"] == 800
    assert all(name.startswith("part-") for names in files_in(output).values() for name in names)
    for config in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):
        sizes = [i.size for i in part_infos(output, [config])]
        assert max(sizes) <= 1.25 * TARGET  # about the target…
        assert sum(size < MIN_FRACTION * TARGET for size in sizes) <= 1  # …but the last of each config
    again = compact(output, TARGET)
    assert again["groups"] == 0 and stamps(part_infos(output)) == stamps(after)  # a rerun is a no-op


def test_new_parts_are_named_by_their_rows_and_keep_their_order(output):
    config = "aaaaaaaaaaaa"
    old = [pq.read_table(path) for path in part_files(output, [config])]
    compact(output, 10**9, [config])
    (new,) = part_files(output, [config])
    table = pq.read_table(new)
    assert table.equals(pa.concat_tables(old))  # the parts' rows in name order
    assert Path(new).name == part_name(config, table.column("image_id").to_pylist())
    assert len(part_files(output, ["bbbbbbbbbbbb"])) == 25  # --config: only that config


def test_parts_at_the_target_stay_and_old_parts_read_with_nulls(tmp_path):
    output = str(tmp_path)
    big = write_parts(rows([f"big{i}" for i in range(2000)]), output)[0]
    old = rows(["old0", "old1"]).drop_columns(["caption", "timings_ms"])  # written before those columns
    folder = Path(big).parent
    pq.write_table(old, folder / "part-0old.parquet")
    for k in range(3):
        write_parts(rows([f"new{k}"]), output)
    before = everything(output)
    assert before.column("caption").null_count == len(before)
    mtime = Path(big).stat().st_mtime_ns
    summary = compact(output, Path(big).stat().st_size)
    assert summary["groups"] == 1 and summary["files_replaced"] == 4
    assert Path(big).stat().st_mtime_ns == mtime  # at the target: left alone
    assert_each_row_once(output, before)


def crash_state(output: str, config: str, stage: str) -> None:
    """Leave the ``config`` folder as a compaction killed at ``stage`` would: ``record`` (the new
    part not yet renamed into place), ``renamed`` (not one old part deleted), ``deleting`` (some
    deleted), ``deleted`` (all deleted, the record not)."""
    fs = pafs.LocalFileSystem()
    infos = part_infos(output, [config])
    folder = infos[0].path.rsplit("/", 1)[0]
    temporary, group = stream_group(fs, folder, deque(infos), 10**9, SizeModel())
    new = part_name(config, group.image_ids)
    record = {"new": new, "replaces": group.names, "temporary": Path(temporary).name}
    write_json(fs, f"{folder}/_compaction-test.json", record)
    if stage == "record":
        return
    fs.move(temporary, f"{folder}/{new}")
    dropped = {"renamed": 0, "deleting": len(group.names) // 2, "deleted": len(group.names)}[stage]
    for name in group.names[:dropped]:
        fs.delete_file(f"{folder}/{name}")


@pytest.mark.parametrize("stage", ["record", "renamed", "deleting", "deleted"])
def test_a_killed_compaction_reads_old_or_new_rows_and_a_rerun_settles_it(output, stage):
    before = everything(output)
    crash_state(output, "aaaaaaaaaaaa", stage)
    assert_each_row_once(output, before)  # readers and a resumed job: every row once
    files = files_in(output)["config=aaaaaaaaaaaa"]
    assert "_compaction-test.json" in files and (stage == "record") == any(f.endswith(".tmp") for f in files)
    summary = compact(output, 10**9)
    assert summary["records_finished" if stage != "record" else "records_rolled_back"] == 1
    assert_each_row_once(output, before)
    assert all(len(names) == 1 and names[0].startswith("part-") for names in files_in(output).values())


def test_a_killed_writer_leaves_only_a_temporary_that_a_rerun_deletes(output):
    folder = Path(output) / "segments" / "config=aaaaaaaaaaaa"
    (folder / ".compaction-0123456789ab.parquet.tmp").write_bytes(b"PAR1 half")
    before = everything(output)
    assert_each_row_once(output, before)
    compact(output, 10**9)
    assert_each_row_once(output, before) and not list(folder.glob(".*"))


def test_deduplicate_keeps_the_ok_row_when_both_copies_sit_in_one_compacted_part(tmp_path):
    output = str(tmp_path)
    write_parts(rows(["a.jpg"], status="error", error="model_failed: RuntimeError: boom"), output)
    write_parts(rows(["b.jpg", "c.jpg"]), output)
    write_parts(rows(["a.jpg", "d.jpg"]), output)  # --retry-errors' ok row, in another batch
    compact(output, 10**9)
    assert len(part_files(output)) == 1 and len(scan(output)) == 5
    assert deduplicate(output, scan(output)) == 1
    table = read_results(output)
    assert sorted(zip(table.column("image_id").to_pylist(), table.column("status").to_pylist())) == [
        ("a.jpg", "ok"),
        ("b.jpg", "ok"),
        ("c.jpg", "ok"),
        ("d.jpg", "ok"),
    ]
    assert deduplicate(output, scan(output)) == 0


def test_overwriting_a_shard_keeps_the_other_shards_rows_of_a_compacted_part(tmp_path):
    output = str(tmp_path)
    ids = [f"img{i}.jpg" for i in range(12)]
    shards = {k: [i for i in ids if in_shard(i, (k, 2))] for k in (0, 1)}
    for k in (0, 1):
        write_parts(rows(shards[k]), output)
    compact(output, 10**9)
    assert len(part_files(output)) == 1
    remove_results(output, shard=(0, 2))
    assert sorted(scan(output).column("image_id").to_pylist()) == sorted(shards[1])


def test_a_shard_overwrite_after_a_killed_compaction_brings_back_no_replaced_part(tmp_path):
    output = str(tmp_path)
    ids = [i for i in (f"img{i}.jpg" for i in range(24)) if in_shard(i, (0, 2))]
    write_parts(rows(ids[:3]), output)
    write_parts(rows(ids[3:]), output)
    crash_state(output, "c1", "renamed")  # one new part of shard 0 only; the old two hidden
    remove_results(output, shard=(0, 2))  # deletes the new part: the old must not come back
    assert len(scan(output)) == 0 and files_in(output) == {"config=c1": []}


def test_compact_command_prints_a_summary(output, capsys):
    assert main(["compact", output, "--target-mb", "1", "--config", "bbbbbbbbbbbb"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["configs"] == 1 and summary["files_before"] == 25 and summary["files_after"] == 1
    assert len(part_files(output, ["aaaaaaaaaaaa"])) == 25


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["{missing}"], "error: no such output folder: "),
        (["{empty}"], "has no segments/ folder"),
        (["{output}", "--target-mb", "0"], "error: --target-mb: must be a number > 0; got '0'"),
        (["{output}", "--target-mb", "lots"], "must be a number > 0; got 'lots'"),
        (["{output}", "--config", "nope"], "error: --config: no results of config nope under "),
        ([], "error: the following arguments are required: OUTPUT"),
    ],
)
def test_compact_command_errors_are_one_line(output, tmp_path, capsys, arguments, message):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "output": output}
    assert main(["compact", *(a.format(**paths) for a in arguments)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and captured.err.count("\n") == 2  # + "(see: … --help)"


def test_compact_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as info:
        main(["compact", "--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0 and "``" not in text and "--target-mb" in text and "de-duplication" in text
