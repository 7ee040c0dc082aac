"""Benchmark readers on real files (tests/data, copied from ../shared/data) and on small
synthetic roots in each dataset's published layout."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import GROUND_TRUTH, IMAGES
from PIL import Image

from dsseg.evaluation.datasets import DatasetRootError, load_dataset
from dsseg.evaluation.datasets.png import CITYSCAPES27_NAMES, COCOSTUFF27_NAMES


def _place(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _image(path, size=(3, 2)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)
    return path


def _png(path, values, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(values, dtype=np.uint8), mode="L")
    if palette:
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    image.save(path)
    return path


def test_bsds500_gives_every_annotators_regions(tmp_path):
    _place(IMAGES / "135069.jpg", tmp_path / "images" / "135069.jpg")
    _place(GROUND_TRUTH / "135069.mat", tmp_path / "groundTruth" / "135069.mat")
    dataset = load_dataset("bsds500", tmp_path)
    (sample,) = dataset.samples()
    annotations = dataset.load_annotations(sample)
    assert 4 <= len(annotations) <= 9
    height, width = np.asarray(Image.open(sample.image)).shape[:2]
    for regions in annotations:
        assert regions.shape == (height, width) and regions.min() >= 1 and len(np.unique(regions)) > 1


def test_cityscapes_label_ids_7_to_33_become_27_classes(tmp_path):
    _place(
        IMAGES / "frankfurt_000000_000294_leftImg8bit.png",
        tmp_path / "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png",
    )
    label_file = GROUND_TRUTH / "frankfurt_000000_000294_gtFine_labelIds.png"
    _place(label_file, tmp_path / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png")
    dataset = load_dataset("cityscapes27", tmp_path)
    (sample,) = dataset.samples()
    raw = np.asarray(Image.open(label_file))
    label = dataset.load_label(sample)
    assert sample.image_id == "frankfurt/frankfurt_000000_000294" and dataset.num_classes == 27
    np.testing.assert_array_equal(label[raw == 7], 0)  # road
    np.testing.assert_array_equal(label[raw == 26], CITYSCAPES27_NAMES.index("car"))
    np.testing.assert_array_equal(label[raw < 7], 255)
    assert set(np.unique(label)) <= set(range(27)) | {255}


def test_camvid_unlabelled_is_ignored(tmp_path):
    label_file = GROUND_TRUTH / "0001TP_009990.png"
    raw = np.asarray(Image.open(label_file))
    _place(label_file, tmp_path / "labels" / "0001TP_009990.png")
    _image(tmp_path / "images" / "0001TP_009990.png", raw.shape[::-1])
    dataset = load_dataset("camvid", tmp_path)
    label = dataset.load_label(dataset.samples()[0])
    np.testing.assert_array_equal(label[raw == 11], 255)
    np.testing.assert_array_equal(label[raw < 11], raw[raw < 11])


def test_horse_masks_are_thresholded_at_127(tmp_path):
    _place(IMAGES / "horses" / "horse001.jpg", tmp_path / "rgb" / "horse001.jpg")
    _place(GROUND_TRUTH / "horse001_figure_ground.jpg", tmp_path / "figure_ground" / "horse001.jpg")
    dataset = load_dataset("horse", tmp_path)
    label = dataset.load_label(dataset.samples()[0])
    gray = np.asarray(Image.open(GROUND_TRUTH / "horse001_figure_ground.jpg").convert("L"))
    np.testing.assert_array_equal(label, gray > 127)
    assert dataset.class_names == ("background", "horse") and 0.05 < label.mean() < 0.95


def test_full_ade20k_seg_png_maps_object_names_to_the_150_classes():
    dataset = load_dataset("ade20k_full", GROUND_TRUTH / "ade20k")
    (sample,) = dataset.samples()
    label = dataset.load_label(sample)
    raw = np.asarray(Image.open(sample.label).convert("RGB")).astype(int)
    full = raw[..., 0] // 10 * 256 + raw[..., 1]
    meta = json.loads((GROUND_TRUTH / "ade20k" / "ADE_train_00016900.json").read_text())["annotation"]
    names = {o["name_ndx"]: o["name"] for o in meta["object"] if o["parts"]["part_level"] == 0}
    assert set(np.unique(full)) - {0} <= set(names)  # the seg PNG encodes the JSON's name_ndx
    np.testing.assert_array_equal(label[full == 0], 255)
    for index, name in names.items():
        found = np.unique(label[full == index])
        assert len(found) <= 1
        if len(found) and found[0] != 255:
            assert dataset.class_names[found[0]] in [s.strip() for s in name.split(",")]


def test_cocostuff27_maps_fine_ids_and_checks_the_curated_list(tmp_path):
    fine = np.array([[0, 0, 156], [123, 255, 91]])  # person, sky-other, grass, banner
    _png(tmp_path / "stuffthingmaps_trainval2017/val2017/000000000139.png", fine)
    _image(tmp_path / "images/val2017/000000000139.jpg")
    dataset = load_dataset("cocostuff27", tmp_path, curated=False)
    label = dataset.load_label(dataset.samples()[0])
    names = [[COCOSTUFF27_NAMES[v] if v != 255 else None for v in row] for row in label]
    assert names == [["person", "person", "sky"], ["plant", None, "textile"]]
    with pytest.raises(DatasetRootError, match="4348 of the split's 4350 image and label files are missing"):
        load_dataset("cocostuff27", tmp_path)  # the curated 2,175 ids, only one present


def test_coco_object_curated_reads_things_from_stuffthingmaps_and_the_rest_as_background(tmp_path):
    """DiffCut's open-vocabulary COCO-Object: stuffthingmaps (COCO id − 1), the 80 things in COCO id
    order → 1..80, stuff and unlabelled → background; nothing ignored."""
    fine = np.array([[0, 18, 89], [123, 255, 90]])  # person, horse, toothbrush; grass, unlabelled, unused id 91
    _png(tmp_path / "stuffthingmaps_trainval2017/val2017/000000000139.png", fine)
    _image(tmp_path / "images/val2017/000000000139.jpg")
    dataset = load_dataset("coco_object_curated", tmp_path, curated=False)
    label = dataset.load_label(dataset.samples()[0])
    np.testing.assert_array_equal(label, [[1, 18, 80], [0, 0, 0]])
    assert dataset.num_classes == 81 and [dataset.class_names[c] for c in (0, 1, 18, 80)] == [
        "background", "person", "horse", "toothbrush",
    ]  # fmt: skip
    with pytest.raises(DatasetRootError, match="4348 of the split's 4350 image and label files are missing"):
        load_dataset("coco_object_curated", tmp_path)  # the curated 2,175 ids of cocostuff27, only one present


def test_voc_and_context_label_conventions(tmp_path):
    raw = np.array([[0, 15, 255], [13, 13, 0]])
    _png(tmp_path / "SegmentationClass" / "2007_000033.png", raw, palette=True)
    (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n")
    _image(tmp_path / "JPEGImages/2007_000033.jpg")
    voc = load_dataset("voc2012", tmp_path)
    np.testing.assert_array_equal(voc.load_label(voc.samples()[0]), raw)  # palette indices, 255 border kept
    assert voc.class_names[15] == "person" and voc.num_classes == 21
    context = np.array([[0, 1, 59], [30, 30, 0]])
    _png(tmp_path / "SegmentationClassContext" / "2007_000033.png", context)
    (tmp_path / "ImageSets/SegmentationContext").mkdir(parents=True)
    (tmp_path / "ImageSets/SegmentationContext/val.txt").write_text("2007_000033\n")
    c59, c60 = load_dataset("context59", tmp_path), load_dataset("context60", tmp_path)
    np.testing.assert_array_equal(c59.load_label(c59.samples()[0]), [[255, 0, 58], [29, 29, 255]])
    np.testing.assert_array_equal(c60.load_label(c60.samples()[0]), context)
    assert c59.class_names[29] == "ground" and c60.class_names[30] == "ground" and c60.class_names[0] == "background"


def test_coco_object_draws_large_instances_first_and_ignores_crowds(tmp_path):
    categories = [
        {"id": cid, "name": f"c{cid}"} for cid in range(1, 91) if cid not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
    ]
    assert len(categories) == 80

    def box(x0, y0, x1, y1):
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    annotations = [
        {
            "id": 1,
            "image_id": 7,
            "category_id": 1,
            "segmentation": box(0, 0, 10, 10),
            "area": 100,
            "iscrowd": 0,
            "bbox": [0, 0, 10, 10],
        },
        {
            "id": 2,
            "image_id": 7,
            "category_id": 90,
            "segmentation": box(2, 2, 4, 4),
            "area": 4,
            "iscrowd": 0,
            "bbox": [2, 2, 2, 2],
        },
        {
            "id": 3,
            "image_id": 7,
            "category_id": 3,
            "segmentation": box(12, 0, 16, 4),
            "area": 16,
            "iscrowd": 1,
            "bbox": [12, 0, 4, 4],
        },
    ]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/instances_val2017.json").write_text(
        json.dumps(
            {
                "images": [{"id": 7, "file_name": "000000000007.jpg", "height": 12, "width": 20}],
                "annotations": annotations,
                "categories": categories,
            }
        )
    )
    dataset = load_dataset("coco_object", tmp_path)
    label = dataset.load_label(dataset.samples()[0])
    assert label.shape == (12, 20) and dataset.num_classes == 81
    assert label[1, 1] == 1 and label[3, 3] == 80  # the small instance (category 90 → class 80) on top
    assert label[1, 13] == 255 and label[11, 19] == 0  # crowd ignored, the rest background


def test_manifest_dataset_and_clear_errors(tmp_path):
    _png(tmp_path / "labels" / "a.png", [[0, 1], [1, 255]])
    _image(tmp_path / "a.jpg", (2, 2))
    (tmp_path / "gt.jsonl").write_text(json.dumps({"image_id": "a", "uri": "a.jpg", "label": "labels/a.png"}) + "\n")
    dataset = load_dataset("manifest", tmp_path / "gt.jsonl", class_names=("sky", "tree"))
    np.testing.assert_array_equal(dataset.load_label(dataset.samples()[0]), [[0, 1], [1, 255]])
    assert dataset.manifest().to_pylist() == [{"image_id": "a", "uri": str(tmp_path / "a.jpg")}]
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(DatasetRootError, match="does not exist"):
        load_dataset("voc2012", tmp_path / "nowhere")
    with pytest.raises(DatasetRootError, match="(?s)gtFine.*expected layout"):
        (tmp_path / "leftImg8bit" / "val").mkdir(parents=True)
        load_dataset("cityscapes27", tmp_path)
