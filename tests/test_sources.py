import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faults import write_tar
from helpers import IMAGES

from dsseg.io.sources import list_inputs, parse_classes, read_bytes

FOLDER_IDS = ["135069.jpg", "corrupt.jpg", "frankfurt_000000_000294_leftImg8bit.png", "horses/horse001.jpg"]


def contents(items):
    return {item["image_id"]: read_bytes(item["source"], item["offset"], item["size"]) for item in items}


def test_folder_is_recursive_sorted_and_relative():
    items = list_inputs(str(IMAGES))
    assert [item["image_id"] for item in items] == FOLDER_IDS
    assert list_inputs(str(IMAGES), limit=2) == items[:2]
    single = list_inputs(str(IMAGES / "135069.jpg"))
    assert [item["image_id"] for item in single] == ["135069.jpg"] and single[0]["offset"] is None
    assert list_inputs(IMAGES.as_uri()) == items  # file:// URIs go through pyarrow's file systems


def test_glob_matches_across_folders():
    assert [item["image_id"] for item in list_inputs(str(IMAGES / "*.jpg"))] == [
        "135069.jpg",
        "corrupt.jpg",
        "horses/horse001.jpg",
    ]
    assert [item["image_id"] for item in list_inputs(str(IMAGES / "horses" / "*"))] == ["horse001.jpg"]
    with pytest.raises(ValueError, match="no images"):
        list_inputs(str(IMAGES / "*.webp"))


def test_manifests_and_tar_shards_give_the_folder_items(tmp_path):
    folder = contents(list_inputs(str(IMAGES)))
    ids = list(folder)
    # Relative URIs resolve against the manifest's folder; extra columns are carried by the manifest, not used here.
    rows = {
        "image_id": ids,
        "uri": [str(IMAGES / i) for i in ids[:2]] + [f"../{IMAGES.name}/{i}" for i in ids[2:]],
        "label": ["x"] * 4,
    }
    (tmp_path / "lists").mkdir()
    pq.write_table(pa.table(rows), tmp_path / "lists" / "manifest.parquet")
    (tmp_path / "lists" / "manifest.jsonl").write_text(
        "".join(json.dumps(dict(zip(rows, v))) + "\n" for v in zip(*rows.values()))
    )
    (tmp_path / IMAGES.name).symlink_to(IMAGES)
    for name in ("manifest.parquet", "manifest.jsonl"):
        items = list_inputs(str(tmp_path / "lists" / name))
        assert [item["image_id"] for item in items] == ids and contents(items) == folder

    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "shard-000.tar", IMAGES, ids[:3])
    write_tar(shards / "shard-001.tar", IMAGES, ids[3:])
    for spec in (shards, shards / "shard-*.tar"):
        items = list_inputs(str(spec))
        assert [item["image_id"] for item in items] == ids
        assert all(item["offset"] > 0 and item["source"].endswith(".tar") for item in items)
        assert contents(items) == folder  # each member read by byte range


def test_shards_partition_the_images_stably():
    items = list_inputs(str(IMAGES))
    shards = [list_inputs(str(IMAGES), shard=(i, 3)) for i in range(3)]
    assert sorted(item["image_id"] for shard in shards for item in shard) == sorted(item["image_id"] for item in items)
    assert sum(len(shard) for shard in shards) == len(items)
    assert list_inputs(str(IMAGES), shard=(1, 3), limit=1) == shards[1][:1]


def test_bad_inputs_are_explained(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        list_inputs(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="cannot tell what .txt is"):
        list_inputs(str(tmp_path / "notes.txt"))
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "a.jpg"}) + "\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['image_id', 'uri'\]"):
        list_inputs(str(tmp_path / "m.jsonl"))
    (tmp_path / "dup.jsonl").write_text(
        "".join(json.dumps({"image_id": "a", "uri": f"{i}.jpg"}) + "\n" for i in range(2))
    )
    with pytest.raises(ValueError, match="repeated image_id"):
        list_inputs(str(tmp_path / "dup.jsonl"))
    with tarfile.open(tmp_path / "packed.tar", "w:gz") as archive:
        archive.add(IMAGES / "135069.jpg", arcname="135069.jpg")
    with pytest.raises(ValueError, match="not an uncompressed tar"):
        list_inputs(str(tmp_path / "packed.tar"))


def test_manifest_class_cells_as_lists_or_comma_strings(tmp_path):
    assert parse_classes(" horse, traffic light ,,horse") == ["horse", "traffic light"]
    assert parse_classes(["sky", " rock "]) == ["sky", "rock"] and parse_classes(None) is None
    table = pa.table({"image_id": ["a", "b"], "uri": ["a.jpg", "b.jpg"], "labels": ["dog,cat", None]})
    pq.write_table(table, tmp_path / "m.parquet")
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"")
    items = list_inputs(str(tmp_path / "m.parquet"))
    assert [item["classes"] for item in items] == [["dog", "cat"], None]


def test_file_uris_keep_hash_and_question_marks_in_names(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name in ("cat#1.jpg", "dog?.jpg"):
        (tmp_path / "imgs" / name).write_bytes((IMAGES / "135069.jpg").read_bytes())
    uri = f"file://{tmp_path}/imgs"
    items = list_inputs(uri)
    assert [item["image_id"] for item in items] == ["cat#1.jpg", "dog?.jpg"]
    assert read_bytes(items[0]["source"]) == (IMAGES / "135069.jpg").read_bytes()
    assert [item["image_id"] for item in list_inputs(f"file://{tmp_path}/imgs/cat#?.jpg")] == ["cat#1.jpg"]


def test_integer_label_columns_are_not_read_as_class_names(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    pq.write_table(pa.table({"image_id": ["a"], "uri": ["a.jpg"], "labels": [3]}), tmp_path / "m.parquet")
    assert list_inputs(str(tmp_path / "m.parquet"))[0]["classes"] is None
