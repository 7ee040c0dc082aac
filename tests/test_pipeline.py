import json
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import torch
from faults import BAD, GOOD, make_fault_folder, write_tar
from helpers import IMAGES, TINY, decoded, output_rows

from dsseg.commands import main as cli_main
from dsseg.errors import ConfigError
from dsseg.io.masks import decode_segments
from dsseg.io.results import read_results, scan, write_parts
from dsseg.io.schema import OUTPUT_SCHEMA
from dsseg.job.config import SegmentJob, temporary_working_dir
from dsseg.job.model_stage import SegmentWorker
from dsseg.job.runner import list_todo, prepare_inputs, run_segment_job
from dsseg.job.write import encode_row
from dsseg.segmenter import forward_groups
from dsseg.spec import MethodSpec

SMALL = {"image_size": 256}  # the tiny backbone at 256² keeps the Ray tests fast


def test_every_bad_input_is_an_error_row_and_every_good_one_keeps_its_size(ray_local, tmp_path, capfd):
    folder = make_fault_folder(tmp_path / "in")
    job = SegmentJob(
        input=str(folder), output=str(tmp_path / "run"), backbone="tiny", configs=[MethodSpec("diffseg", SMALL)],
        batch_size=3, device="cpu", max_image_side=256, rows_per_file=4,
    )  # fmt: skip
    summary = run_segment_job(job)
    table = read_results(job.output)
    assert table.schema.equals(OUTPUT_SCHEMA, check_metadata=False)
    rows = {row["image_id"]: row for row in table.to_pylist()}
    assert len(table) == len(rows) == len(GOOD) + len(BAD) == summary["images"]
    for image_id, reason in BAD.items():
        assert rows[image_id]["status"] == "error" and rows[image_id]["error"].startswith(reason + ": "), rows[
            image_id
        ]["error"]
        assert rows[image_id]["segments"] == []
    for image_id, (height, width) in GOOD.items():
        row = rows[image_id]
        assert row["status"] == "ok" and row["error"] is None, row["error"]
        assert (row["height"], row["width"]) == (height, width)
        assert decode_segments(row["segments"]).shape == (height, width)  # raises unless the masks partition the image
        assert row["timings_ms"]["unet"] > 0 and row["timings_ms"]["rle"] >= 0
    assert summary["ok"] == len(GOOD) and summary["errors_by_reason"] == {reason: 1 for reason in BAD.values()}
    assert summary["complete"] and summary["images_per_second"] > 0 and summary["mean_stage_ms"]["unet"] > 0
    # Layout: partitioned by config, readable as one Parquet dataset, run recorded, success marked.
    (config_id,) = job.config_ids()
    assert {p.parent.name for p in (tmp_path / "run" / "segments").rglob("*.parquet")} == {f"config={config_id}"}
    assert len(pq.read_table(tmp_path / "run" / "segments")) == len(rows)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [c["config_id"] for c in config["configs"]] == [config_id] and config["backbone"] == "tiny"
    assert config["configs"][0]["method_config"]["kl_threshold"] == [1.1, 1.1, 1.1] and "torch" in config["versions"]
    assert json.loads((tmp_path / "run" / "_SUCCESS").read_text())["complete"]
    # The terminal shows our progress lines, not Ray Data's progress blocks or Ray's spurious errors.
    err = capfd.readouterr().err
    total = len(GOOD) + len(BAD)
    assert f"dsseg: 0/{total} images" in err and f"dsseg: {total}/{total} images (100%)" in err, err[-2000:]
    (final,) = [line for line in err.splitlines() if f"{total}/{total} images" in line]
    assert final.endswith(f", {len(BAD)} errors")
    for noise in ("has constructor arguments in the object store", "logging_progress", "Starting execution"):
        assert noise not in err, err[-2000:]


def test_resume_after_a_cancelled_run_gives_exactly_one_row_per_image_and_config(ray_local, tmp_path):
    configs = [MethodSpec("diffseg", SMALL | {"kl_threshold": t}) for t in (0.9, 1.1)]
    job = SegmentJob(
        input=str(IMAGES),
        output=str(tmp_path / "run"),
        backbone="tiny",
        configs=configs,
        batch_size=1,
        device="cpu",
        rows_per_file=2,
    )
    assert run_segment_job(job)["complete"]
    # A run cancelled part-way: some part files never landed, and no _SUCCESS.
    parts = sorted((tmp_path / "run" / "segments").rglob("part-*.parquet"))
    for part in parts[: len(parts) // 2]:
        part.unlink()
    (tmp_path / "run" / "_SUCCESS").unlink()
    finished = {(r["config_id"], r["image_id"]) for r in scan(job.output).to_pylist()}
    assert 2 <= len(finished) < 8

    orphan = parts[0].parent / f".{parts[0].name}.0badf00d.tmp"  # the temporary of a writer killed with the run
    orphan.write_bytes(b"half a parquet file")
    second = run_segment_job(job)  # the same command again
    assert second["complete"] and (tmp_path / "run" / "_SUCCESS").exists()
    assert second["temporaries_removed"] == 1 and not orphan.exists()
    assert second["rows_written"] == 8 - len(finished)  # finished rows were not redone
    rows = scan(job.output).to_pylist()
    pairs = [(r["config_id"], r["image_id"]) for r in rows]
    assert len(pairs) == len(set(pairs)) == 8  # 4 images × 2 configs, none twice, none missing

    third = run_segment_job(job)
    assert third["already_done"] == 4 and third["rows_written"] == 0 and third["complete"]
    todo = list_todo(
        SegmentJob(**{**job.__dict__, "overwrite": True, "limit": 1})
    )  # what --overwrite --limit 1 would run
    assert len(scan(job.output)) == 0 and [len(item["configs"]) for item in todo] == [
        2
    ]  # earlier rows gone, both redone


class CrashOnceWorker(SegmentWorker):
    """The model stage, dying like an OOM-killed process (no exception, no cleanup) on its first
    batch unless ``marker`` exists, which it then creates."""

    marker = ""

    def __call__(self, batch):
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        return super().__call__(batch)


def test_a_killed_model_actor_is_restarted_and_loses_no_rows(ray_local, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actor gets this test's class, not an import
    CrashOnceWorker.marker = str(tmp_path / "crashed")
    job = SegmentJob(
        input=str(IMAGES),
        output=str(tmp_path / "run"),
        backbone="tiny",
        configs=[MethodSpec("diffseg", SMALL)],
        batch_size=2,
        device="cpu",
    )
    summary = run_segment_job(job, worker=CrashOnceWorker)
    assert os.path.exists(CrashOnceWorker.marker)  # the first actor did exit mid-job
    assert summary["complete"] and summary["rows_written"] == 4 and summary["ok"] == 3


def test_many_configs_share_one_forward_per_extraction_setting(tmp_path):
    configs = [MethodSpec("diffseg", SMALL | {"kl_threshold": t}) for t in (0.2, 0.5, 1.1)] + [
        MethodSpec("diffseg", SMALL | {"timestep": 100})
    ]
    job = SegmentJob(input=str(IMAGES), output=str(tmp_path), backbone="tiny", configs=configs, device="cpu")
    assert [len(indices) for _, indices in forward_groups([spec.resolved for spec in job.configs])] == [3, 1]
    worker = SegmentWorker(job)
    unet_calls = []
    worker.segmenter.backbone.unet.register_forward_pre_hook(  # a pre-hook: the capture stops the forward early
        lambda module, args: unet_calls.append(args[0].shape[0])
    )
    rows = worker(decoded(job, {"135069.jpg", "horses/horse001.jpg"})).to_pylist()
    assert unet_calls == [2, 2]  # one batched UNet step per extraction setting, not per config
    assert sorted((r["config_id"], r["image_id"]) for r in rows) == sorted(
        (c, i) for c in job.config_ids() for i in ("135069.jpg", "horses/horse001.jpg")
    )
    labels = [r["labels"] for r in rows if r["image_id"] == "135069.jpg"]
    assert len(set(labels[:3])) == 3  # the thresholds segment the shared attention differently


def test_manifest_and_tar_inputs_give_the_folder_rows(tmp_path):
    ids = ["135069.jpg", "horses/horse001.jpg"]
    write_tar(tmp_path / "shard-0.tar", IMAGES, ids)
    (tmp_path / "list.jsonl").write_text(
        "".join(json.dumps({"image_id": i, "uri": str(IMAGES / i)}) + "\n" for i in ids)
    )
    jobs = [
        SegmentJob(
            input=spec,
            output=str(tmp_path / "out"),
            backbone="tiny",
            configs=[MethodSpec("diffseg", SMALL)],
            device="cpu",
        )
        for spec in (str(IMAGES), str(tmp_path / "list.jsonl"), str(tmp_path / "shard-0.tar"))
    ]
    worker = SegmentWorker(jobs[0])
    results = []
    for job in jobs:
        rows = [encode_row(row) for row in worker(decoded(job, set(ids))).to_pylist()]
        results.append({row["image_id"]: (row["status"], row["width"], row["height"], row["segments"]) for row in rows})
    assert sorted(results[0]) == ids and all(status == "ok" for status, *_ in results[0].values())
    assert results[1] == results[0] and results[2] == results[0]


def test_out_of_memory_halves_the_batch_before_giving_up(tmp_path, monkeypatch):
    job = SegmentJob(
        input=str(IMAGES), output=str(tmp_path), backbone="tiny", configs=[MethodSpec("diffseg", SMALL)], device="cpu"
    )
    worker = SegmentWorker(job)
    extractor = worker.segmenter.groups[0].extractor
    original, sizes = extractor.__call__, []

    def limited(images, timer=None, classes=None, texts=None, source_hw=None, capacity=1):
        sizes.append(len(images))
        if len(images) > capacity:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(images, timer, classes, texts, source_hw)

    monkeypatch.setattr(
        type(extractor),
        "__call__",
        lambda self, images, timer=None, classes=None, texts=None, hw=None: limited(images, timer, classes, texts, hw),
    )
    batch = decoded(job, {"135069.jpg", "frankfurt_000000_000294_leftImg8bit.png", "horses/horse001.jpg"})
    rows = worker(batch).to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert sizes == [3, 1, 2, 1, 1]  # 3 fails → 1 ok, 2 fails → 1, 1 ok

    monkeypatch.setattr(
        type(extractor),
        "__call__",
        lambda self, images, timer=None, classes=None, texts=None, hw=None: limited(
            images, timer, classes, texts, hw, 0
        ),
    )
    rows = worker(batch).to_pylist()
    assert all(r["status"] == "error" and r["error"].startswith("out_of_memory: OutOfMemoryError") for r in rows)


def test_worker_writes_ncut_rows_with_parents(tmp_path):
    job = SegmentJob(
        input=str(IMAGES), output=str(tmp_path), backbone="tiny", configs=[MethodSpec("ncut", SMALL)], device="cpu"
    )
    assert job.configs[0].resolved.extraction.noising.noise == "ddim_inversion"
    model_rows = SegmentWorker(job)(decoded(job, {"135069.jpg", "horses/horse001.jpg"})).to_pylist()
    for row in map(encode_row, model_rows):
        assert row["status"] == "ok" and row["method"] == "ncut"
        assert decode_segments(row["segments"]).shape == (row["height"], row["width"])
        parents = [segment["parent"] for segment in row["segments"]]
        assert len(parents) > 1 and all(isinstance(p, int) and p >= 1 for p in parents)
        assert row["timings_ms"]["invert"] > 0


def test_job_configuration_errors_are_clear(tmp_path):
    missing = SegmentJob(input=str(tmp_path / "missing"), output=str(tmp_path))  # a value: no file system read
    with pytest.raises(ConfigError, match="^input: .* does not exist"):
        missing.check_paths()  # where the job runs, before any model loads
    with pytest.raises(ConfigError, match="^tau: is not a parameter of 'diffseg'") as info:
        SegmentJob(input=str(IMAGES), output=str(tmp_path), configs=[{"method": "diffseg", "tau": 1.0}])
    assert info.value.param == "tau"  # errors name the parameter; the command line names the flag
    with pytest.raises(ValueError, match="unknown method"):
        SegmentJob(input=str(IMAGES), output=str(tmp_path), configs=[{"method": "sam"}])
    with pytest.raises(ConfigError, match="^batch_size: must be an integer ≥ 1"):
        SegmentJob(input=str(IMAGES), output=str(tmp_path), batch_size=0)
    with pytest.raises(ValueError, match="same"):
        SegmentJob(
            input=str(IMAGES), output=str(tmp_path), configs=[{"kl_threshold": 0.9}, {"kl_threshold": [0.9, 0.9, 0.9]}]
        )
    with pytest.raises(ValueError, match="share image_size"):
        SegmentJob(input=str(IMAGES), output=str(tmp_path), configs=[{"image_size": 256}, {"image_size": 512}])
    with pytest.raises(ValueError, match="0 ≤ I < N"):
        SegmentJob(input=str(IMAGES), output=str(tmp_path), shard="4/4")
    first = SegmentJob(input=str(IMAGES), output=str(tmp_path), backbone="tiny", configs=[{"kl_threshold": 0.9}])
    same = SegmentJob(
        input=str(IMAGES), output=str(tmp_path / "x"), backbone="tiny", configs=[{"kl_threshold": [0.9, 0.9, 0.9]}]
    )
    other = SegmentJob(input=str(IMAGES), output=str(tmp_path), backbone="tiny", configs=[{"kl_threshold": 1.0}])
    assert first.config_ids() == same.config_ids() != other.config_ids()


def test_a_submitted_job_refuses_a_relative_output(tmp_path, monkeypatch, capsys):
    """Under `ray job submit --working-dir`, the job runs in a temporary copy: out/x would vanish."""
    monkeypatch.chdir(tmp_path)
    submitted = {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}, "metadata": {"job_submission_id": "x"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(submitted))
    assert temporary_working_dir() == str(tmp_path)
    with pytest.raises(ConfigError, match=r"^output: 'out/x' is relative.*temporary copy.*absolute path"):
        SegmentJob(input=str(IMAGES), output="out/x").check_paths()
    SegmentJob(input=str(IMAGES), output=str(tmp_path / "out")).check_paths()  # absolute paths and URIs are fine
    SegmentJob(input=str(IMAGES), output="s3://bucket/out").check_paths()
    assert cli_main(["job", "--input", str(IMAGES), "--output", "out/x", *TINY]) == 2
    assert "dsseg job: error: --output: 'out/x' is relative" in capsys.readouterr().err
    assert temporary_working_dir({"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {}})}) is None
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    SegmentJob(input=str(IMAGES), output="out/x").check_paths()  # run directly: a relative output is the user's


def test_manifest_classes_label_openvocab_rows_and_name_diffseg_rows(ray_local, tmp_path):
    classes = {"135069.jpg": ["horse", "grass"], "horses/horse001.jpg": ["sky", "traffic light", "rock"]}
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(
        "".join(json.dumps({"image_id": i, "uri": str(IMAGES / i), "classes": c}) + "\n" for i, c in classes.items())
    )
    small = {"image_size": 128}
    configs = [
        MethodSpec("openvocab", small),
        MethodSpec("diffseg", small | {"naming": "majority", "kl_threshold": 0.5}),
    ]
    job = SegmentJob(input=str(manifest), output=str(tmp_path / "out"), backbone="tiny", configs=configs, device="cpu")
    summary = run_segment_job(job)
    assert summary["complete"] and summary["ok"] == 4
    openvocab_id, diffseg_id = job.config_ids()
    for row in read_results(job.output).to_pylist():
        labels = [segment["label"] for segment in row["segments"]]
        decode_segments(row["segments"])  # still a partition of the image
        if row["config_id"] == openvocab_id:
            assert row["method"] == "openvocab" and set(labels) <= {"background", "ignore", *classes[row["image_id"]]}
            assert len(labels) == len(set(labels))  # one segment per present class
        else:
            assert row["config_id"] == diffseg_id and labels and set(labels) <= set(classes[row["image_id"]])
    folder_job = SegmentJob(
        input=str(IMAGES), output=str(tmp_path / "bad"), backbone="tiny", configs=[configs[0]], device="cpu"
    )
    with pytest.raises(ValueError, match="no \\(or an empty\\) class list"):
        run_segment_job(folder_job)


def keep_first_class():
    """A class-filter factory (``--class-filter test_pipeline:keep_first_class``) for the test below."""
    return lambda images, candidates: [list(names[:1]) for names in candidates]


def test_worker_applies_the_jobs_class_filter(tmp_path):
    job = SegmentJob(
        input=str(IMAGES), output=str(tmp_path), backbone="tiny", device="cpu", class_filter="test_pipeline:keep_first_class",
        configs=[MethodSpec("openvocab", {"image_size": 128, "classes": ("horse", "grass", "sky")})],
    )  # fmt: skip
    unfiltered = SegmentJob(input=str(IMAGES), output=str(tmp_path), backbone="tiny", device="cpu", configs=job.configs)
    assert job.config_ids() != unfiltered.config_ids()  # the filter changes the results, so the config id
    rows = [
        encode_row(row) for row in SegmentWorker(job)(decoded(job, {"135069.jpg", "horses/horse001.jpg"})).to_pylist()
    ]
    assert len(rows) == 2 and all(row["status"] == "ok" for row in rows)
    assert {segment["label"] for row in rows for segment in row["segments"]} <= {"background", "ignore", "horse"}


_rows = output_rows


def test_overwrite_with_a_shard_deletes_only_that_shards_results(tmp_path):
    from dsseg.io.results import mark_success, part_files, remove_results
    from dsseg.io.sources import in_shard

    ids = [f"img{i}.jpg" for i in range(12)]
    shards = {k: [i for i in ids if in_shard(i, (k, 2))] for k in (0, 1)}
    assert shards[0] and shards[1]
    for k in (0, 1):
        write_parts(_rows(shards[k]), str(tmp_path))
        mark_success(str(tmp_path), (k, 2), {"complete": True})
    remove_results(str(tmp_path), shard=(0, 2))
    left = scan(str(tmp_path)).column("image_id").to_pylist()
    assert sorted(left) == sorted(shards[1]) and len(part_files(str(tmp_path))) == 1
    assert not (tmp_path / "_SUCCESS-shard-0-of-2").exists() and (tmp_path / "_SUCCESS-shard-1-of-2").exists()


def test_retry_errors_redoes_transient_errors_and_the_ok_row_wins(tmp_path):
    from dsseg.io.results import deduplicate, done_pairs

    output = str(tmp_path)
    write_parts(_rows(["a.jpg"], status="error", error="model_failed: RuntimeError: boom"), output)
    write_parts(_rows(["b.jpg"], status="error", error="corrupt: broken data stream"), output)
    write_parts(_rows(["c.jpg"]), output)
    assert done_pairs(scan(output)) == {("c1", "a.jpg"), ("c1", "b.jpg"), ("c1", "c.jpg")}
    assert done_pairs(scan(output), retry_errors=True) == {
        ("c1", "b.jpg"),
        ("c1", "c.jpg"),
    }  # corrupt inputs stay final
    write_parts(_rows(["a.jpg", "c.jpg"]), output)  # the retry's ok row, and a late duplicate of c
    assert deduplicate(output, scan(output)) == 2
    rows = {r["image_id"]: r["status"] for r in scan(output).to_pylist()}
    assert rows == {"a.jpg": "ok", "b.jpg": "error", "c.jpg": "ok"} and len(scan(output)) == 3


def test_jobs_join_a_local_head_as_it_is(monkeypatch):
    """With `ray start --head` running, ray.init(num_cpus=...) is refused; the job joins the head."""
    import ray

    from dsseg.job import runner

    calls = []

    def fake_init(**kwargs):
        calls.append(kwargs)
        if "num_cpus" in kwargs:
            raise ValueError("When connecting to an existing cluster, num_cpus and num_gpus must not be provided.")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(runner, "_joined_cluster", False)  # restored after the test, as the real Ray is
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("Context", (), {"gcs_address": "127.0.0.1:6379"}))
    assert runner.init_ray() is True  # on a cluster: its resources, not ours
    assert "num_cpus" in calls[0] and "num_cpus" not in calls[1]
    monkeypatch.setattr(ray, "init", lambda **kwargs: (_ for _ in ()).throw(ValueError("something else")))
    with pytest.raises(ValueError, match="something else"):
        runner.init_ray()


def test_outputs_that_are_not_this_runs_are_refused_unless_appending(tmp_path):
    from dsseg.errors import ConfigError
    from dsseg.io.results import read_config, write_config

    job = SegmentJob(
        input=str(IMAGES), output=str(tmp_path / "out"), backbone="tiny", configs=[MethodSpec("diffseg", SMALL)]
    )
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        prepare_inputs(SegmentJob(**{**job.__dict__, "output": str(tmp_path / "a-file")}))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds other files \(thesis.tex\) and no dsseg results"):
        prepare_inputs(SegmentJob(**{**job.__dict__, "output": str(tmp_path / "notes")}))
    assert prepare_inputs(SegmentJob(**{**job.__dict__, "output": str(tmp_path / "notes"), "append": True}))
    # Results of one input, then another input into the same output:
    write_config(job.output, job.record())
    other = tmp_path / "other"
    other.mkdir()
    (other / "photo.jpg").write_bytes((IMAGES / "135069.jpg").read_bytes())
    with pytest.raises(ConfigError, match="holds the results of input .*images; give another output"):
        prepare_inputs(SegmentJob(**{**job.__dict__, "input": str(other)}))
    appended = SegmentJob(**{**job.__dict__, "input": str(other), "append": True})
    prepare_inputs(appended)
    write_config(appended.output, appended.record())
    assert read_config(job.output)["inputs"] == [str(IMAGES), str(other)]  # every input recorded
    assert prepare_inputs(job).listed is not None  # the first input again: its own output, no append needed
