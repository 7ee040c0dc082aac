"""``dsseg export``: every format read back by its tool's own library where it is installed (the test
extras; skipped without), else by the layout; streaming, error rows, atomic folders, pseudo-label outputs."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from helpers import IMAGES
from PIL import Image

from dsseg.commands import main
from dsseg.errors import ConfigError
from dsseg.export import ExportSettings, export
from dsseg.io.masks import decode_segments, encode_labels
from dsseg.io.results import read_results, write_config, write_parts
from dsseg.io.schema import OUTPUT_SCHEMA

# image id → (file, names of segments 0, 1, 2); sizes are the files' own
PICTURES = {
    "135069.jpg": ("135069.jpg", ("background", "bird", "ignore")),
    "horses/horse001.jpg": ("horses/horse001.jpg", ("background", "horse", "grass")),
    "frankfurt.png": ("frankfurt_000000_000294_leftImg8bit.png", ("road", "car", "background")),
}


def label_map(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W) int32 ids 0, 1, 2: a background, a box and a band (their places vary with ``seed``)."""
    labels = np.zeros((height, width), dtype=np.int32)
    labels[height // 4 : height // 2 + seed * 7, width // 5 : width // 2] = 1
    labels[-(height // 6) :, :] = 2
    return labels


def build_output(folder, named: bool, config_id: str = "c1", method: str | None = None) -> str:
    """A segment-job output of the test photos (one row each, segments named when ``named``) and
    an error row for the truncated JPEG."""
    rows = []
    for seed, (image_id, (file, names)) in enumerate(PICTURES.items()):
        source = str(IMAGES / file)
        width, height = Image.open(source).size
        segments = encode_labels(label_map(height, width, seed))
        for segment, name in zip(segments, names):
            segment.update(label=name if named else None, score=0.5 + 0.1 * segment["segment_id"] if named else None)
            segment["parent"] = None
        rows.append({"image_id": image_id, "source": source, "width": width, "height": height, "segments": segments})
    rows.append({"image_id": "corrupt.jpg", "source": str(IMAGES / "corrupt.jpg"), "width": None, "height": None})
    method = method or ("openvocab" if named else "diffseg")
    for row in rows:
        ok = "segments" in row
        row |= {"method": method, "config_id": config_id, "status": "ok" if ok else "error"}
        row |= {"error": None if ok else "truncated: image file is truncated", "segments": row.get("segments", [])}
    write_parts(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), str(folder))
    previous = json.loads((folder / "config.json").read_text())["configs"] if (folder / "config.json").exists() else []
    write_config(
        str(folder), {"input": str(IMAGES), "configs": [*previous, {"config_id": config_id, "method": method}]}
    )
    return str(folder)


@pytest.fixture
def agnostic(tmp_path):
    return build_output(tmp_path / "agnostic", named=False)


@pytest.fixture
def named(tmp_path):
    return build_output(tmp_path / "named", named=True)


def ok_rows(output: str) -> dict[str, dict]:
    return {row["image_id"]: row for row in read_results(output).to_pylist() if row["status"] == "ok"}


def run_export(output: str, format: str, to, **options) -> dict:
    summary = export(ExportSettings(output=output, format=format, to=str(to), **options))
    assert summary["rows_exported"] == 3 and summary["errors_by_reason"] == {"truncated": 1}, summary
    return summary


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def class_map(row: dict, names: list[str]) -> np.ndarray:
    """The class ids a named export should write for ``row`` (``names``: its class list; 255 ignore)."""
    lookup = {s["segment_id"]: names.index(s["label"]) if s["label"] != "ignore" else 255 for s in row["segments"]}
    segments = decode_segments(row["segments"])
    return np.vectorize(lookup.get)(segments).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- formats


def test_coco_loads_in_pycocotools_with_every_named_segment(named, tmp_path):
    from pycocotools.coco import COCO

    summary = run_export(named, "coco", tmp_path / "coco")
    coco = COCO(str(tmp_path / "coco" / "annotations.json"))
    rows = ok_rows(named)
    categories = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    assert "background" not in categories.values() and "ignore" not in categories.values()
    assert len(coco.dataset["images"]) == 3 == summary["coco"]["images"]
    for image in coco.dataset["images"]:
        row = rows[image["file_name"]]
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        expected = {s["label"] for s in row["segments"]} - {"background", "ignore"}
        assert {categories[a["category_id"]] for a in annotations} == expected
        segments = decode_segments(row["segments"])
        for annotation in annotations:
            assert np.array_equal(coco.annToMask(annotation).astype(bool), segments == annotation["dsseg_segment_id"])
            assert annotation["score"] == pytest.approx(0.5 + 0.1 * annotation["dsseg_segment_id"])


def test_coco_of_a_class_agnostic_output_has_one_category_and_every_segment(agnostic, tmp_path):
    from pycocotools.coco import COCO

    run_export(agnostic, "coco", tmp_path / "coco")
    coco = COCO(str(tmp_path / "coco" / "annotations.json"))
    assert [c["name"] for c in coco.dataset["categories"]] == ["fg"]
    assert len(coco.dataset["annotations"]) == 9  # three segments in each of three images


def test_voc_writes_class_and_object_pngs_jpegs_and_lists(named, tmp_path):
    run_export(named, "voc", tmp_path / "voc")
    voc = tmp_path / "voc"
    names = (voc / "class_names.txt").read_text().split()
    assert names[0] == "background"
    stems = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert sorted(stems) == ["135069", "frankfurt", "horses__horse001"]
    rows = ok_rows(named)
    row = rows["horses/horse001.jpg"]
    classes = Image.open(voc / "SegmentationClass" / "horses__horse001.png")
    assert classes.mode == "P"
    assert np.array_equal(np.asarray(classes), class_map(row, names))
    objects = png(voc / "SegmentationObject" / "135069.png")
    segments = decode_segments(rows["135069.jpg"]["segments"])
    assert np.array_equal(objects, np.choose(segments, [0, 2, 255]))  # background 0, bird 1 + 1, ignore 255
    jpeg = voc / "JPEGImages" / "135069.jpg"
    assert jpeg.read_bytes() == (IMAGES / "135069.jpg").read_bytes()  # JPEG bytes kept
    assert Image.open(voc / "JPEGImages" / "frankfurt.jpg").format == "JPEG"  # a PNG re-encoded


def test_cvat_segmentation_mask_layout_colours_match_the_labelmap(named, agnostic, tmp_path):
    for output, name in ((named, "cvat-named"), (agnostic, "cvat-agnostic")):
        run_export(output, "cvat", tmp_path / name, copy_images=False)
        folder = tmp_path / name
        lines = (folder / "labelmap.txt").read_text().splitlines()
        assert lines[0] == "# label:color_rgb:parts:actions" and lines[1] == "background:0,0,0::"
        colours = {tuple(int(c) for c in line.split(":")[1].split(",")): line.split(":")[0] for line in lines[1:]}
        assert len(colours) == len(lines) - 1  # one colour per label
        assert sorted((folder / "ImageSets" / "Segmentation" / "default.txt").read_text().split()) == [
            "135069",
            "frankfurt",
            "horses/horse001",
        ]
        assert not (folder / "JPEGImages").exists()
        row = ok_rows(output)["horses/horse001.jpg"]
        rgb = png(folder / "SegmentationClass" / "horses" / "horse001.png")
        assert rgb.ndim == 3 and rgb.shape[2] == 3
        painted = np.array([[colours[tuple(p)] for p in line] for line in rgb[::40, ::40]])
        segments = decode_segments(row["segments"])[::40, ::40]
        expected = {s["segment_id"]: s["label"] or f"segment_{s['segment_id']}" for s in row["segments"]}
        assert (painted == np.vectorize(expected.get)(segments)).all()
        instances = png(folder / "SegmentationObject" / "horses" / "horse001.png")
        assert len(np.unique(instances.reshape(-1, 3), axis=0)) == 3


def test_fiftyone_layout_reads_with_fiftyones_own_importer(agnostic, tmp_path):
    run_export(agnostic, "fiftyone", tmp_path / "fo")
    folder = tmp_path / "fo"
    targets = json.loads((folder / "mask_targets.json").read_text())
    assert targets == {"0": "segment_0", "1": "segment_1", "2": "segment_2"}
    rows = ok_rows(agnostic)
    assert sorted(p.name for p in (folder / "data").iterdir()) == [
        "135069.jpg",
        "frankfurt.png",
        "horses__horse001.jpg",
    ]
    assert np.array_equal(png(folder / "labels" / "135069.png"), decode_segments(rows["135069.jpg"]["segments"]))
    data = pytest.importorskip("fiftyone.utils.data")  # the importer Dataset.from_dir uses (no database needed)
    importer = data.ImageSegmentationDirectoryImporter(dataset_dir=str(folder))
    found = {}
    with importer:
        for image_path, _, label in importer:
            found[image_path.rsplit("/", 1)[-1]] = label.get_mask()
    assert len(found) == 3
    assert np.array_equal(found["horses__horse001.jpg"], decode_segments(rows["horses/horse001.jpg"]["segments"]))


def test_hf_dataset_loads_with_image_features_equal_to_the_rows(named, agnostic, tmp_path):
    datasets = pytest.importorskip("datasets")
    run_export(agnostic, "hf", tmp_path / "hf-agnostic", shard_rows=2)
    run_export(named, "hf", tmp_path / "hf-named")
    assert sorted(p.name for p in (tmp_path / "hf-agnostic" / "data").iterdir()) == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    for output, folder in ((agnostic, "hf-agnostic"), (named, "hf-named")):
        dataset = datasets.load_dataset(str(tmp_path / folder), split="train")
        assert isinstance(dataset.features["image"], datasets.Image)
        assert isinstance(dataset.features["label"], datasets.Image)
        rows = ok_rows(output)
        assert sorted(dataset["image_id"]) == sorted(rows)
        for example in dataset:
            row = rows[example["image_id"]]
            segments = decode_segments(row["segments"])
            assert example["image"].size == (row["width"], row["height"])
            if output == agnostic:
                assert np.array_equal(np.asarray(example["label"]), segments)
                assert "names" not in example and "scores" not in example
            else:
                id2label = json.loads((tmp_path / folder / "id2label.json").read_text())
                names = [id2label[str(i)] for i in range(len(id2label) - 1)]
                assert np.array_equal(np.asarray(example["label"]), class_map(row, names))
                assert example["names"] == [s["label"] for s in row["segments"]]
                assert example["scores"] == pytest.approx([s["score"] for s in row["segments"]])


def decode_brush(rle: list[int]) -> np.ndarray:
    """A reference decoder of Label Studio's brush RLE (bit by bit, as its converter reads it): the flat values."""
    bits = "".join(f"{byte:08b}" for byte in rle)
    place = 0

    def read(size: int) -> int:
        nonlocal place
        place += size
        return int(bits[place - size : place], 2)

    count, word = read(32), read(5) + 1
    widths = [read(4) + 1 for _ in range(4)]
    out, i = np.zeros(count, dtype=np.uint8), 0
    while i < count:
        repeat = read(1)
        end = i + 1 + read(widths[read(2)])
        if repeat:
            out[i:end] = read(word)
        else:
            for k in range(i, end):
                out[k] = read(word)
        i = end
    return out


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (40, 70), (300, 301)])
def test_brush_rle_decodes_to_the_mask(shape):
    from dsseg.export.labelstudio import brush_rle

    rng = np.random.default_rng(sum(shape))
    masks = [rng.random(shape) > 0.5, np.ones(shape, bool), np.zeros(shape, bool)]
    for mask in masks:
        flat = decode_brush(brush_rle(mask))
        assert np.array_equal(flat.reshape(*shape, 4), np.repeat(mask[..., None], 4, axis=2) * np.uint8(255))


def test_labelstudio_tasks_decode_with_the_sdk_to_the_same_masks(named, tmp_path):
    run_export(named, "labelstudio", tmp_path / "ls", images="/data/local-files/?d=photos")
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    config = (tmp_path / "ls" / "labeling_config.xml").read_text()
    assert '<BrushLabels name="label" toName="image">' in config and 'value="bird"' in config
    rows = ok_rows(named)
    assert len(tasks) == 3
    try:
        from label_studio_sdk.converter.brush import decode_rle
    except ImportError:  # the labelstudio extra is not installed: the reference decoder
        decode_rle = decode_brush
    for task in tasks:
        row = rows[task["data"]["image_id"]]
        assert task["data"]["image"] == f"/data/local-files/?d=photos/{row['image_id']}"
        (prediction,) = task["predictions"]
        results = prediction["result"]
        assert len(results) == len(row["segments"])
        segments = decode_segments(row["segments"])
        for result, segment in zip(results, row["segments"]):
            assert result["type"] == "brushlabels" and result["value"]["format"] == "rle"
            assert (result["original_width"], result["original_height"]) == (row["width"], row["height"])
            assert result["value"]["brushlabels"] == [segment["label"]]
            flat = np.asarray(decode_rle(result["value"]["rle"]), dtype=np.uint8)
            mask = flat.reshape(row["height"], row["width"], 4)[:, :, 3] > 0
            assert np.array_equal(mask, segments == segment["segment_id"])


def test_labelstudio_names_class_agnostic_segments_and_defaults_to_the_source(agnostic, tmp_path):
    run_export(agnostic, "labelstudio", tmp_path / "ls")
    task = json.loads((tmp_path / "ls" / "tasks.json").read_text())[0]
    assert task["data"]["image"] == str(IMAGES / PICTURES[task["data"]["image_id"]][0])
    assert [r["value"]["brushlabels"][0] for r in task["predictions"][0]["result"]] == [
        "segment_0",
        "segment_1",
        "segment_2",
    ]


# ---------------------------------------------------------------------------------------------- the stream


def test_rotated_photos_are_written_upright_as_png(tmp_path):
    """A JPEG with an EXIF rotation: the masks are in the upright frame, so the image is re-encoded upright."""
    from dsseg.export.rows import ImageReader

    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    path = tmp_path / "rotated.jpg"
    Image.fromarray(rgb).save(path, exif=exif.tobytes())
    data, extension = ImageReader().read({"image_id": "rotated.jpg", "source": str(path)}, (30, 20))
    assert extension == ".png" and Image.open(io.BytesIO(data)).size == (20, 30)
    with pytest.raises(ValueError, match="not at the image's size"):
        ImageReader().read({"image_id": "rotated.jpg", "source": str(path)}, (64, 64))


def test_missing_images_are_skipped_and_counted(agnostic, tmp_path):
    summary = export(
        ExportSettings(output=agnostic, format="hf", to=str(tmp_path / "hf"), images=str(tmp_path / "nowhere"))
    )
    assert summary["rows_exported"] == 0 and summary["skipped_by_reason"] == {"image_not_found": 3}


def test_limit_and_several_configs(tmp_path):
    output = build_output(tmp_path / "two", named=False, config_id="a")
    build_output(tmp_path / "two", named=True, config_id="b")
    with pytest.raises(ConfigError, match="holds 2 configs; export one with --config ID: a \\(diffseg\\), b"):
        export(ExportSettings(output=output, format="coco", to=str(tmp_path / "x")))
    with pytest.raises(ConfigError, match="'c' is not a config"):
        export(ExportSettings(output=output, format="coco", to=str(tmp_path / "x"), config_id="c"))
    summary = export(ExportSettings(output=output, format="coco", to=str(tmp_path / "x"), config_id="b", limit=2))
    assert summary["rows_exported"] == 2 and summary["config_id"] == "b"


def test_a_pseudolabel_output_names_its_runs_and_keeps_its_class_order(tmp_path):
    pseudo = tmp_path / "pseudo"
    build_output(pseudo / "run-weak", named=True)
    build_output(pseudo / "run-agnostic", named=False)
    classes = ["background", "horse", "bird", "road", "car", "grass"]
    (pseudo / "summary.json").write_text(json.dumps({"classes": classes}))
    with pytest.raises(ConfigError, match="pseudo-label output with two runs: export .*run-weak .*run-agnostic"):
        export(ExportSettings(output=str(pseudo), format="voc", to=str(tmp_path / "voc")))
    summary = run_export(str(pseudo / "run-weak"), "voc", tmp_path / "voc")
    assert summary["classes"] == 6
    assert (tmp_path / "voc" / "class_names.txt").read_text().split() == classes
    (pseudo / "run-agnostic" / "config.json").unlink()
    for path in (pseudo / "run-agnostic").rglob("*.parquet"):
        path.unlink()
    summary = run_export(str(pseudo), "coco", tmp_path / "coco")  # only one run left: that one
    assert summary["output"].endswith("run-weak")


# ---------------------------------------------------------------------------------------------- the folder


def test_a_rerun_refuses_an_existing_folder_or_replaces_it_whole(agnostic, tmp_path, capsys):
    to = tmp_path / "out"
    arguments = ["export", agnostic, "--format", "voc", "--to", str(to), "--no-images"]
    assert main(arguments) == 0
    assert json.loads(capsys.readouterr().out)["rows_exported"] == 3
    (to / "stale.txt").write_text("from before")
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert "--to: " in error and "exists and is not empty; give a new folder, or --overwrite" in error
    assert (to / "stale.txt").exists()
    assert main([*arguments, "--overwrite", "--limit", "1"]) == 0
    assert not (to / "stale.txt").exists()
    assert (to / "ImageSets" / "Segmentation" / "train.txt").read_text().split() == ["135069"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing left aside


def test_a_failed_export_leaves_the_old_folder_and_no_temporary(agnostic, tmp_path, monkeypatch):
    from dsseg.export import coco

    to = tmp_path / "out"
    run_export(agnostic, "coco", to)
    before = (to / "annotations.json").read_bytes()

    def broken(self, row):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(coco.CocoWriter, "write", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export(ExportSettings(output=agnostic, format="coco", to=str(to), overwrite=True))
    assert (to / "annotations.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agnostic", "out"]


def test_command_line_mistakes_are_one_line(agnostic, tmp_path, capsys):
    assert main(["export", agnostic, "--format", "tiff", "--to", str(tmp_path / "x")]) == 2
    assert "--format: invalid choice" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--format", "coco", "--to", str(tmp_path / "x")]) == 2
    assert "holds no segment-job output" in capsys.readouterr().err
    assert main(["export", agnostic, "--format", "coco", "--to", str(tmp_path / "x"), "--config", "zz"]) == 2
    assert "--config: 'zz' is not a config" in capsys.readouterr().err


def test_duckdb_reads_an_output_for_segments_per_config_and_error_reasons(agnostic):
    duckdb = pytest.importorskip("duckdb")
    per_config = duckdb.sql(
        f"SELECT config_id, count(*) AS rows, sum(len(segments)) AS segments "
        f"FROM read_parquet('{agnostic}/segments/*/*.parquet') GROUP BY config_id"
    ).fetchall()
    assert per_config == [("c1", 4, 9)]
    reasons = duckdb.sql(
        f"SELECT split_part(error, ':', 1) AS reason, count(*) FROM read_parquet('{agnostic}/segments/*/*.parquet') "
        "WHERE status = 'error' GROUP BY reason"
    ).fetchall()
    assert reasons == [("truncated", 1)]
