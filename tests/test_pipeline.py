import json

import pyarrow.parquet as pq
import pytest

from conftest import IMAGES
from dsseg.masks import decode_segments
from dsseg.pipeline import SegmentJob, list_images, run_segment_job
from dsseg.schema import OUTPUT_SCHEMA


def test_list_images_is_recursive_sorted_and_relative():
    items = list_images(str(IMAGES))
    assert [item["image_id"] for item in items] == [
        "135069.jpg",
        "corrupt.jpg",
        "frankfurt_000000_000294_leftImg8bit.png",
        "horses/horse001.jpg",
    ]
    assert list_images(str(IMAGES), limit=2) == items[:2]
    assert list_images(str(IMAGES / "135069.jpg"))[0]["image_id"] == "135069.jpg"


def test_segment_job_end_to_end_with_a_corrupt_file(ray_local, tmp_path):
    job = SegmentJob(input=str(IMAGES), output=str(tmp_path / "run"), backbone="tiny", batch_size=2, device="cpu")
    summary = run_segment_job(job)
    assert summary["rows"] == 4 and summary["ok"] == 3 and summary["error"] == 1
    table = pq.read_table(tmp_path / "run" / "segments")
    assert table.schema.equals(OUTPUT_SCHEMA, check_metadata=False)
    rows = {row["image_id"]: row for row in table.to_pylist()}
    assert sorted(rows) == [item["image_id"] for item in list_images(str(IMAGES))]
    corrupt = rows["corrupt.jpg"]
    assert corrupt["status"] == "error" and "truncated" in corrupt["error"] and corrupt["segments"] == []
    sizes = {"135069.jpg": (321, 481), "frankfurt_000000_000294_leftImg8bit.png": (128, 256), "horses/horse001.jpg": (590, 800)}
    for image_id, (height, width) in sizes.items():
        row = rows[image_id]
        assert row["status"] == "ok" and row["error"] is None
        assert (row["height"], row["width"]) == (height, width)
        assert row["method"] == "diffseg" and row["config_id"] == summary["config_id"]
        labels = decode_segments(row["segments"])  # raises unless the masks partition the image
        assert labels.shape == (height, width)
        assert [segment["segment_id"] for segment in row["segments"]] == list(range(len(row["segments"])))
        timings = row["timings_ms"]
        assert timings.pop("invert") is None  # no noise, no inversion
        assert all(value is not None and value >= 0 for value in timings.values())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config_id"] == summary["config_id"] and config["backbone"] == "tiny"
    assert config["method_config"]["kl_threshold"] == [1.1, 1.1, 1.1]
    assert config["extract_config"]["timestep"] is None and "torch" in config["versions"]

    with pytest.raises(FileExistsError, match="--overwrite"):
        run_segment_job(job)


def test_job_configuration_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        SegmentJob(input=str(tmp_path / "missing"), output=str(tmp_path))
    with pytest.raises(TypeError, match="unknown parameter"):
        SegmentJob(input=str(IMAGES), output=str(tmp_path), params={"tau": 1.0})
    with pytest.raises(ValueError, match="unknown method"):
        SegmentJob(input=str(IMAGES), output=str(tmp_path), method="sam")
    with pytest.raises(ValueError, match="≥ 1"):
        SegmentJob(input=str(IMAGES), output=str(tmp_path), batch_size=0)
    first = SegmentJob(input=str(IMAGES), output=str(tmp_path), backbone="tiny", params={"kl_threshold": 0.9})
    same = SegmentJob(input=str(IMAGES), output=str(tmp_path / "x"), backbone="tiny", params={"kl_threshold": [0.9, 0.9, 0.9]})
    other = SegmentJob(input=str(IMAGES), output=str(tmp_path), backbone="tiny", params={"kl_threshold": 1.0})
    assert first.config_id() == same.config_id() != other.config_id()


def test_empty_folder_is_reported(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        list_images(str(tmp_path))


def test_worker_writes_ncut_rows_with_parents(tmp_path):
    import pyarrow as pa

    from dsseg.pipeline import SegmentWorker, decode_batch

    job = SegmentJob(input=str(IMAGES), output=str(tmp_path), backbone="tiny", method="ncut", params={"image_size": 256}, device="cpu")
    extract, _ = job.configs()
    assert extract.noise == "ddim_inversion"
    items = [item for item in list_images(str(IMAGES)) if item["image_id"] in ("135069.jpg", "horses/horse001.jpg")]
    decoded = decode_batch({key: [item[key] for item in items] for key in items[0]}, extract)
    table = SegmentWorker(job, job.config_id())(decoded)
    assert table.schema.equals(OUTPUT_SCHEMA, check_metadata=False) and isinstance(table, pa.Table)
    for row in table.to_pylist():
        assert row["status"] == "ok" and row["method"] == "ncut"
        assert decode_segments(row["segments"]).shape == (row["height"], row["width"])
        parents = [segment["parent"] for segment in row["segments"]]
        assert len(parents) > 1 and all(isinstance(p, int) and p >= 1 for p in parents)
        assert row["timings_ms"]["invert"] > 0
