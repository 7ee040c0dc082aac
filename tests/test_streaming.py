"""The job at scale: the streamed plan, the key index of written rows, writes by count and by
time, and interrupts that end in one line and resume exactly."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import IMAGES, output_rows

from dsseg.io.results import read_results, scan, write_parts
from dsseg.io.sources import in_shard, list_inputs, plan_inputs
from dsseg.job.config import SegmentJob
from dsseg.job.plan import build_done_index, contains, missing_configs, pair_keys, part_keys, remove_repeated_rows
from dsseg.job.runner import list_todo, run_segment_job
from dsseg.job.write import PartWriter, flushing_by_time
from dsseg.spec import MethodSpec

SMALL = {"image_size": 64}
GOOD_IMAGES = ["135069.jpg", "horses/horse001.jpg"]


def manifest(path: Path, ids: list[str], **columns) -> Path:
    uris = [str(IMAGES / GOOD_IMAGES[i % len(GOOD_IMAGES)]) for i in range(len(ids))]
    pq.write_table(pa.table({"image_id": ids, "uri": uris, **columns}), path, row_group_size=7)
    return path


def test_pair_keys_are_per_config_and_found_by_binary_search():
    keys = pair_keys("c1", ["a", "b", "c"])
    assert keys.dtype == np.dtype("S16") and len(set(keys.tolist())) == 3
    assert not set(keys.tolist()) & set(pair_keys("c2", ["a", "b", "c"]).tolist())  # another config, other keys
    done = np.sort(pair_keys("c1", ["b", "z"]))
    assert contains(done, keys).tolist() == [False, True, False]
    assert contains(np.empty(0, "S16"), keys).tolist() == [False] * 3


def test_missing_configs_keeps_each_item_with_the_configs_it_lacks():
    items = pa.Table.from_pylist(
        [{"image_id": i, "source": f"/{i}.jpg", "offset": None, "size": None, "classes": None} for i in "abc"]
    )
    done = np.sort(np.concatenate([pair_keys("c1", ["a", "b"]), pair_keys("c2", ["a"])]))
    todo = missing_configs(items, ["c1", "c2"], done)
    assert todo.column("image_id").to_pylist() == ["b", "c"]  # a is done for both configs
    assert todo.column("configs").to_pylist() == [["c2"], ["c1", "c2"]]


def test_a_folder_of_manifests_is_one_input_read_in_chunks(tmp_path):
    (tmp_path / "lists").mkdir()
    manifest(tmp_path / "lists" / "b.parquet", [f"b{i}" for i in range(10)])
    manifest(tmp_path / "lists" / "a.parquet", [f"a{i}" for i in range(20)])
    inputs = plan_inputs(str(tmp_path / "lists"))
    assert inputs.listed is None and [Path(m).name for m in inputs.manifests] == ["a.parquet", "b.parquet"]
    ids = [item["image_id"] for item in list_inputs(str(tmp_path / "lists"))]
    assert ids == [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(10)]  # file order, files sorted
    assert [item["image_id"] for item in list_inputs(str(tmp_path / "lists" / "*.parquet"), limit=3)] == ids[:3]
    sharded = [item["image_id"] for item in list_inputs(str(tmp_path / "lists"), shard=(1, 3), limit=4)]
    assert sharded == [i for i in ids if in_shard(i, (1, 3))][:4]
    (tmp_path / "lists" / "photo.jpg").write_bytes((IMAGES / "135069.jpg").read_bytes())
    with pytest.raises(ValueError, match="holds both images"):
        plan_inputs(str(tmp_path / "lists"))


def test_part_keys_skip_transient_errors_only_when_retrying(tmp_path):
    rows = pa.concat_tables(
        [
            output_rows(["a"], "c1"),
            output_rows(["b"], "c1", "error", "read_failed: gone"),
            output_rows(["c"], "c1", "error", "corrupt: x"),
        ]
    )
    (path,) = write_parts(rows, str(tmp_path))
    assert len(part_keys([path], skip_transient_errors=False)) == 3
    kept = part_keys([path], skip_transient_errors=True)
    assert sorted(kept.tolist()) == sorted(pair_keys("c1", ["a", "c"]).tolist())  # the read failure is redone


def test_the_writer_closes_a_batch_by_count_or_by_time(tmp_path):
    writer = PartWriter(str(tmp_path), rows_per_file=3, flush_seconds=0.5)
    writer.add(output_rows(["a", "b"], "c1"))
    assert writer.rows_written == 0  # two rows held: neither full nor old
    writer.add(output_rows(["c", "d", "e", "f", "g"], "c1"))
    assert writer.rows_written == 7 and writer.files_written == 3  # at most rows_per_file per file
    with flushing_by_time(PartWriter(str(tmp_path / "timed"), rows_per_file=100, flush_seconds=0.3), 0.05) as timed:
        timed.add(output_rows(["x"], "c1"))
        deadline = time.monotonic() + 10
        while not timed.rows_written and time.monotonic() < deadline:
            time.sleep(0.05)
        assert timed.rows_written == 1  # landed by time, with no new rows arriving
        timed.add(output_rows(["y"], "c1"))
    assert timed.rows_written == 2  # the held rest is written on the way out
    assert sorted(read_results(str(tmp_path / "timed")).column("image_id").to_pylist()) == ["x", "y"]


@pytest.mark.parametrize("planned", [False, True])  # a fresh index, or the plan's (a run that wrote nothing)
def test_repeated_rows_are_found_through_the_index_and_one_kept(ray_local, tmp_path, planned):
    output = str(tmp_path)
    write_parts(pa.concat_tables([output_rows(["a", "b"], "c1"), output_rows(["c"], "c2")]), output)
    write_parts(output_rows(["b"], "c1", "error", "model_failed: x"), output)  # a retried image's old error row
    write_parts(
        pa.concat_tables([output_rows(["a"], "c1", "error", "model_failed: y"), output_rows(["d"], "c1")]), output
    )
    index = build_done_index(output, ["c1", "c2"]) if planned else None
    assert remove_repeated_rows(output, ["c1", "c2"], index=index) == 2
    rows = {(r["config_id"], r["image_id"]): r["status"] for r in scan(output).to_pylist()}
    assert (
        rows == {("c1", "a"): "ok", ("c1", "b"): "ok", ("c1", "d"): "ok", ("c2", "c"): "ok"} and len(scan(output)) == 4
    )
    assert remove_repeated_rows(output, ["c1", "c2"]) == 0


def test_a_streamed_manifest_plan_shards_and_skips_done_pairs(ray_local, tmp_path):
    ids = [f"img{i:03d}" for i in range(40)]
    path = manifest(tmp_path / "m.parquet", ids)
    configs = [MethodSpec("diffseg", SMALL | {"kl_threshold": t}) for t in (0.9, 1.1)]
    job = SegmentJob(input=str(path), output=str(tmp_path / "out"), backbone="tiny", configs=configs, device="cpu")
    first, second = job.config_ids()
    write_parts(output_rows(ids[:10], first), job.output)
    write_parts(output_rows(ids[:5], second), job.output)
    todo = {row["image_id"]: row["configs"] for row in list_todo(job)}
    assert len(todo) == 35 and all(todo[i] == [second] for i in ids[5:10])  # only the config each lacks
    assert all(todo[i] == [first, second] for i in ids[10:])
    shards = [{row["image_id"] for row in list_todo(SegmentJob(**{**job.__dict__, "shard": (k, 3)}))} for k in range(3)]
    assert set.union(*shards) == set(todo) and sum(map(len, shards)) == len(todo)  # disjoint, complete
    assert all(in_shard(i, (k, 3)) for k, shard in enumerate(shards) for i in shard)


def run_job(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with log.open("w") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "dsseg.cli", "job", *args], stdout=handle, stderr=subprocess.STDOUT, env=env
        )


def wait_for_new_part(output: Path, before: set[Path], job: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and job.poll() is None:
        if set((output / "segments").glob("config=*/part-*.parquet")) - before:
            return
        time.sleep(0.2)
    job.kill()
    raise AssertionError("no part file landed")


def interrupt_then_resume(tmp_path: Path, signals: tuple[signal.Signals, ...], images: int = 96) -> None:
    """Interrupt a job with each of ``signals`` once a new part file lands, checking the one-line
    ending each time, then run the same job to the end (in this process) and check exactly one row
    per image. Every run joins the tests' Ray, as `ray job submit` drivers join a cluster's: a
    driver's signal ends its own job only, and no run pays for a Ray start-up."""
    import ray

    ids = [f"img{i:04d}" for i in range(images)]  # enough that each run is still going when its first part lands
    path = manifest(tmp_path / "m.parquet", ids)
    output = tmp_path / "out"
    args = ["--input", str(path), "--output", str(output), "--backbone", "tiny", "--device", "cpu"]
    args += ["--address", ray.get_runtime_context().gcs_address]
    args += ["--param", "image_size=64", "--batch-size", "4", "--rows-per-file", "500", "--flush-seconds", "1"]
    written = 0
    for number in signals:
        before = set((output / "segments").glob("config=*/part-*.parquet"))
        job = run_job(args, tmp_path / "log.txt")
        wait_for_new_part(output, before, job)
        job.send_signal(number)
        assert job.wait(timeout=60) == 130
        lines = (tmp_path / "log.txt").read_text().strip().splitlines()
        assert "Traceback" not in "\n".join(lines) and "Error" not in "\n".join(lines), lines
        rows = len(scan(str(output)))
        assert lines[-1] == f"interrupted: {rows - written} rows written to {output}; run the same command to resume"
        written = rows
        assert 0 < written < len(ids)  # rows held when the signal came were written; not done yet
    job = SegmentJob(
        input=str(path), output=str(output), backbone="tiny", device="cpu", configs=[MethodSpec("diffseg", SMALL)],
        batch_size=4, rows_per_file=500, flush_seconds=1,
    )  # fmt: skip
    summary = run_segment_job(job)  # the arguments above, as the command line makes them
    assert summary["complete"] and summary["already_done"] == written and summary["rows_written"] == len(ids) - written
    pairs = Counter((r["config_id"], r["image_id"]) for r in scan(str(output)).to_pylist())
    assert len(pairs) == len(ids) and set(pairs.values()) == {1}  # exactly one row per image
    assert (output / "_SUCCESS").exists()


def test_sigterm_as_ray_job_stop_sends_it_ends_in_one_line_and_the_resume_is_exact(ray_local, tmp_path):
    interrupt_then_resume(tmp_path, (signal.SIGTERM,))


@pytest.mark.slow
def test_ctrl_c_then_sigterm_then_a_full_run(ray_local, tmp_path):
    """A terminal's Ctrl-C (SIGINT to the driver), then `ray job stop`'s SIGTERM, then a full run."""
    interrupt_then_resume(tmp_path, (signal.SIGINT, signal.SIGTERM), images=150)
