"""Pseudo-label exports: VOC PNGs, COCO JSON, planted labels, resume, quality report."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import GROUND_TRUTH, IMAGES, TINY
from PIL import Image
from pycocotools.coco import COCO

from dsseg.commands import main as dsseg_main
from dsseg.commands.pseudolabel import build_parser, request_of
from dsseg.errors import ConfigError
from dsseg.evaluation.exports import (
    agnostic_segments,
    class_list,
    labels_from_coco,
    labels_from_voc,
    voc_label_map,
    voc_palette,
)
from dsseg.evaluation.metrics import score
from dsseg.methods.openvocab import labels_from_scores
from dsseg.model.vocabularies import IGNORE_LABEL
from dsseg.pseudolabel import PSEUDO_LABEL_PRESETS
from dsseg.pseudolabel import quality as quality_module
from dsseg.pseudolabel.inputs import check_unique_stems, classes_for, input_rows, segment_jobs
from dsseg.pseudolabel.quality import check_ground_truth, ground_truth_lookup, ground_truth_names, header_size, quality
from dsseg.segmentation import Segmentation


def _row(labels: np.ndarray, names: list[str | None]) -> dict:
    segments = Segmentation(labels=labels.astype(np.int32), method="openvocab", names=names).to_rles()
    return {"image_id": "x", "height": labels.shape[0], "width": labels.shape[1], "segments": segments}


def test_voc_palette_matches_the_published_colours():
    palette = np.array(voc_palette()).reshape(256, 3)
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert palette[15].tolist() == [192, 128, 128] and palette[255].tolist() == [224, 224, 192]


def test_planted_scores_become_the_planted_pseudo_labels_and_the_ignore_band():
    generator = torch.Generator().manual_seed(0)
    scores = torch.zeros(2, 20, 30)
    scores[0, :, :10] = 0.9  # horse on the left
    scores[1, :, 20:] = 0.8  # grass on the right; the middle stays below the threshold: background
    scores += 0.3 * torch.rand(scores.shape, generator=generator) * (scores == 0)  # weak noise elsewhere
    scores[0, 5, 5] = 0.52  # one uncertain pixel: horse leads background (0.5) by 0.02
    labels = labels_from_scores(scores, background_threshold=0.5, ignore_margin=0.05)
    ids = labels.clone()
    ids[labels == IGNORE_LABEL] = 3
    pseudo = voc_label_map(
        _row(ids.numpy(), ["background", "horse", "grass", "ignore"]), ("background", "grass", "horse")
    )
    expected = np.zeros((20, 30), dtype=np.uint8)
    expected[:, :10] = 2  # horse is class 2 of this class list
    expected[:, 20:] = 1
    channels = torch.cat([torch.full((1, 20, 30), 0.5), scores]).numpy()
    top = np.sort(channels, axis=0)
    expected[(top[-1] - top[-2]) < 0.05] = 255  # exactly the low-margin pixels
    assert expected[5, 5] == 255 and (expected == 255).sum() < 50
    np.testing.assert_array_equal(pseudo, expected)


def test_class_agnostic_filters():
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[10:30, 10:30] = 1  # an object
    labels[0:2, 0:2] = 2  # a speck
    labels[35:, 35:] = 3  # a small object in a corner
    row = _row(labels, [None] * 4)
    kept = agnostic_segments(row, min_area=0.01, max_masks=5)
    assert [s["segment_id"] for s in kept] == [1, 3]  # background (border) and speck dropped, largest first
    assert [
        s["segment_id"] for s in agnostic_segments(row, min_area=0.0, max_masks=1, drop_border_background=False)
    ] == [0]


def test_image_labels_from_voc_xml_and_coco_instances(tmp_path):
    (tmp_path / "ImageSets/Main").mkdir(parents=True)
    (tmp_path / "ImageSets/Main/train.txt").write_text("2007_000032\n")
    (tmp_path / "Annotations").mkdir()
    objects = "".join(
        f"<object><name>{n}</name><part><name>head</name></part></object>" for n in ("pottedplant", "person", "person")
    )
    (tmp_path / "Annotations/2007_000032.xml").write_text(f"<annotation>{objects}</annotation>")
    assert labels_from_voc(tmp_path) == [
        {
            "image_id": "2007_000032",
            "uri": str(tmp_path / "JPEGImages/2007_000032.jpg"),
            "labels": ["person", "potted plant"],
        }
    ]
    instances = {
        "images": [{"id": 5, "file_name": "a.jpg", "height": 4, "width": 4}],
        "annotations": [
            {
                "id": 1,
                "image_id": 5,
                "category_id": 18,
                "segmentation": [[0, 0, 2, 0, 2, 2]],
                "area": 2,
                "iscrowd": 0,
                "bbox": [0, 0, 2, 2],
            }
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
    }
    (tmp_path / "inst.json").write_text(json.dumps(instances))
    assert labels_from_coco(tmp_path / "inst.json", tmp_path / "img") == [
        {"image_id": "5", "uri": str(tmp_path / "img" / "a.jpg"), "labels": ["dog"]}
    ]
    assert class_list([["horse"], ["person"]])[:2] == ("background", "aeroplane")  # VOC order
    assert class_list([["zebra"], []]) == ("background", "zebra")


def _manifest(tmp_path: Path, agnostic: bool = True) -> Path:
    """Two images with labels and, with ``agnostic``, two without (each kind is a segment job)."""
    rows = [
        {"image_id": "horse001", "uri": str(IMAGES / "horses" / "horse001.jpg"), "labels": ["horse"]},
        {"image_id": "photo", "uri": str(IMAGES / "135069.jpg"), "labels": ["horse", "person"]},
        {"image_id": "city", "uri": str(IMAGES / "frankfurt_000000_000294_leftImg8bit.png"), "labels": []},
        {"image_id": "photo2", "uri": str(IMAGES / "135069.jpg"), "labels": []},
    ][: 4 if agnostic else 2]
    path = tmp_path / "list.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


FAST = [*TINY, "--param", "image_size=128", "--pamr-iterations", "2", "--min-area", "0.0"]


def pseudolabel_main(argv: list[str]) -> int:
    """``dsseg pseudolabel ARGV``'s exit status."""
    return dsseg_main(["pseudolabel", *argv])


def parse_request(argv: list[str]):
    """The resolved request ``dsseg pseudolabel ARGV`` runs (preset and defaults filled in)."""
    return request_of(build_parser().parse_args(argv)).resolved()


@pytest.mark.slow  # ~30 s on 2 cores (four segment jobs); the resume test below checks one run's VOC and COCO files
def test_two_shards_export_voc_and_coco_with_unique_ids(ray_local, tmp_path):
    manifest, out = _manifest(tmp_path), tmp_path / "out"
    for shard in ("0/2", "1/2"):
        assert pseudolabel_main(["--input", str(manifest), "--output", str(out), "--shard", shard, *FAST]) == 0
    pngs = sorted((out / "VOCdevkit/VOC2012/SegmentationClassAug").glob("*.png"))
    assert [p.stem for p in pngs] == ["horse001", "photo"]
    for png in pngs:
        image = Image.open(png)
        assert image.mode == "P" and set(np.unique(np.asarray(image))) <= set(range(21)) | {255}
        assert image.size == Image.open(out / "VOCdevkit/VOC2012/JPEGImages" / f"{png.stem}.jpg").size
    voc = out / "VOCdevkit/VOC2012"
    assert (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split() == ["horse001", "photo"]
    # The paths torchvision's VOCSegmentation(root=out, year="2012", image_set="train") opens:
    for image_id in (voc / "ImageSets/Segmentation/train.txt").read_text().split():
        assert (voc / "JPEGImages" / f"{image_id}.jpg").is_file() and (
            voc / "SegmentationClass" / f"{image_id}.png"
        ).is_file()
    assert (out / "VOCdevkit/VOC2012/class_names.txt").read_text().split("\n")[:2] == ["background", "aeroplane"]
    coco = COCO(str(out / "coco/annotations.json"))
    images = coco.loadImgs(coco.getImgIds())
    assert sorted(i["dsseg_image_id"] for i in images) == ["city", "horse001", "photo", "photo2"]
    assert len({i["id"] for i in images}) == 4 and len(set(coco.getAnnIds())) == len(coco.getAnnIds()) > 0
    for annotation in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(annotation["image_id"])[0]
        assert isinstance(annotation["segmentation"]["counts"], str)
        assert coco.annToMask(annotation).shape == (image["height"], image["width"])
        assert coco.loadCats(annotation["category_id"])[0]["name"] in ("horse", "person", "fg")
    assert not list(out.rglob("*.tmp"))


def test_a_killed_job_resumes_and_writes_each_image_once(ray_local, tmp_path):
    from dsseg.job.runner import run_segment_job

    manifest, out = _manifest(tmp_path, agnostic=False), tmp_path / "out"  # one segment job per run
    args = parse_request(["--input", str(manifest), "--output", str(out), *FAST])
    weak = segment_jobs(args, input_rows(args), out)["weak"]
    first = run_segment_job(dataclasses.replace(weak, limit=1))  # a run that got through one image before it died
    assert first["rows_written"] == 1
    (out / "VOCdevkit/VOC2012/SegmentationClassAug").mkdir(parents=True)
    leftover = out / "VOCdevkit/VOC2012/SegmentationClassAug/.photo.png.1234.tmp"
    leftover.write_bytes(b"half a file")  # a killed writer's leftover, an hour old
    os.utime(leftover, (leftover.stat().st_mtime - 7200,) * 2)
    assert pseudolabel_main(["--input", str(manifest), "--output", str(out), *FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["segment_jobs"]["weak"]["already_done"] == 1 and summary["segment_jobs"]["weak"]["rows_written"] == 1
    assert summary["weak_images"] == 2 and summary["stale_temporaries_removed"] == 1
    assert not list(out.rglob("*.tmp"))
    from dsseg.io.results import read_results

    rows = read_results(str(out / "run-weak")).column("image_id").to_pylist()
    assert sorted(rows) == ["horse001", "photo"]
    assert sorted(p.name for p in (out / "VOCdevkit/VOC2012/SegmentationClassAug").glob("*.png")) == [
        "horse001.png",
        "photo.png",
    ]
    voc = out / "VOCdevkit/VOC2012"
    for png in (voc / "SegmentationClassAug").glob("*.png"):  # palette PNGs of VOC's class ids, 255 = ignore
        image = Image.open(png)
        assert image.mode == "P" and set(np.unique(np.asarray(image))) <= set(range(21)) | {255}
        assert image.size == Image.open(voc / "JPEGImages" / f"{png.stem}.jpg").size
    for image_id in (voc / "ImageSets/Segmentation/train.txt").read_text().split():  # what VOC loaders open
        assert (voc / "JPEGImages" / f"{image_id}.jpg").is_file() and (
            voc / "SegmentationClass" / f"{image_id}.png"
        ).is_file()
    coco = COCO(str(out / "coco/annotations.json"))
    annotations = coco.loadAnns(coco.getAnnIds())
    assert len({a["id"] for a in annotations}) == len(annotations) > 0
    assert all(
        coco.annToMask(a).shape == tuple(coco.loadImgs(a["image_id"])[0][k] for k in ("height", "width"))
        for a in annotations
    )
    # Other settings into the same output: the PNGs are rewritten, and the COCO file holds each image once.
    assert pseudolabel_main(["--input", str(manifest), "--output", str(out), *FAST, "--ignore-margin", "0.3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["voc_pngs_removed"] == 2 and summary["voc_pngs_written"] == 2 and summary["weak_images"] == 2
    assert summary["coco"]["images"] == 2
    assert json.loads((out / "VOCdevkit/VOC2012/pseudolabel.json").read_text())["config_id"] != weak.config_ids()[0]


def test_params_go_to_the_jobs_whose_method_takes_them(tmp_path):
    manifest = _manifest(tmp_path)
    argv = [
        "--input",
        str(manifest),
        "--output",
        str(tmp_path / "out"),
        "--param",
        "image_size=128",
        "--param",
        "kl_threshold=0.5",
    ]
    args = parse_request(argv)
    jobs = segment_jobs(args, input_rows(args), tmp_path / "out")
    (weak,), (agnostic,) = jobs["weak"].configs, jobs["agnostic"].configs
    assert weak.params["image_size"] == agnostic.params["image_size"] == 128
    assert "kl_threshold" not in weak.params and agnostic.params["kl_threshold"] == 0.5
    assert pseudolabel_main([*argv, "--param", "no_such_thing=1"]) == 2
    with pytest.raises(ValueError, match="share the file name"):
        check_unique_stems([{"image_id": "a/b.jpg"}, {"image_id": "a__b.png"}])


def test_the_preset_and_the_captioner_set_the_weak_job(tmp_path):
    argv = ["--input", str(_manifest(tmp_path)), "--output", str(tmp_path / "out")]
    args = parse_request([*argv, "--preset", "diffsegmenter-voc2012-train", "--captioner", "tiny"])
    jobs = segment_jobs(args, input_rows(args), tmp_path / "out")
    (weak,), (agnostic,) = jobs["weak"].configs, jobs["agnostic"].configs
    noising = weak.resolved.extraction.noising
    assert noising.timesteps == (1, 50, 100, 150) and noising.noise == "noise" and noising.timestep is None
    assert weak.resolved.extraction.prompting.caption_descriptors and jobs["weak"].captioner == "tiny"
    assert jobs["agnostic"].captioner is None and agnostic.resolved.extraction.noising.timesteps is None
    assert args.backbone == PSEUDO_LABEL_PRESETS["diffsegmenter-voc2012-train"].backbone
    # the released script's single step: --param timestep=100 replaces the preset's four
    args = parse_request([*argv, "--preset", "diffsegmenter-voc2012-train", "--param", "timestep=100", *TINY])
    (weak,) = segment_jobs(args, input_rows(args), tmp_path / "out")["weak"].configs
    assert weak.resolved.extraction.noising.timesteps is None and weak.resolved.extraction.noising.timestep == 100
    assert args.backbone == "tiny"
    # the paper's refinement: no PAMR, no ignore band, a dense CRF; BLIP-large continues the prompts
    params = weak.resolved.params
    assert (params.pamr_iterations, params.ignore_margin, params.crf_iterations) == (0, None, 10)
    assert args.captioner == "Salesforce/blip-image-captioning-large"
    prompting = weak.resolved.extraction.prompting
    assert (prompting.class_weighting, prompting.class_tokens, prompting.spellings) == (
        "compel",
        "first",
        "diffsegmenter-voc20",
    )
    asked = ["--preset", "diffsegmenter-voc2012-train", "--pamr-iterations", "3", "--ignore-margin", "0.2", *TINY]
    args = parse_request([*argv, *asked, "--crf-iterations", "0"])
    (weak,) = segment_jobs(args, input_rows(args), tmp_path / "out")["weak"].configs
    assert (weak.resolved.params.pamr_iterations, weak.resolved.params.ignore_margin) == (3, 0.2)
    assert weak.resolved.params.crf_iterations == 0
    args = parse_request([*argv, *TINY, "--ignore-margin", "none"])  # no preset: dsseg's PAMR, no band as asked
    (weak,) = segment_jobs(args, input_rows(args), tmp_path / "out")["weak"].configs
    assert (weak.resolved.params.pamr_iterations, weak.resolved.params.ignore_margin) == (10, None)


def test_quality_report_equals_the_metrics_module(ray_local, tmp_path):
    root = tmp_path / "gt"
    root.mkdir()
    mask = (
        Image.open(GROUND_TRUTH / "horse001_figure_ground.jpg")
        .convert("L")
        .resize(Image.open(IMAGES / "horses/horse001.jpg").size)
    )
    truth = (np.asarray(mask) > 127).astype(np.uint8)
    Image.fromarray(truth).save(root / "horse001.png")
    (tmp_path / "classes.txt").write_text("horse\n")
    manifest = tmp_path / "one.jsonl"
    manifest.write_text(
        json.dumps({"image_id": "horse001", "uri": str(IMAGES / "horses/horse001.jpg"), "labels": ["horse"]}) + "\n"
    )
    out = tmp_path / "out"
    argv = [
        "--input",
        str(manifest),
        "--output",
        str(out),
        "--gt-dir",
        str(root),
        "--class-list",
        str(tmp_path / "classes.txt"),
        *FAST,
    ]
    assert pseudolabel_main(argv) == 0
    report = json.loads((out / "quality.json").read_text())
    pseudo = np.asarray(Image.open(out / "VOCdevkit/VOC2012/SegmentationClassAug/horse001.png")).astype(np.int64)
    expected = score([np.where(pseudo == 255, 2, pseudo)], [truth], num_classes=2, protocol="semantic")
    assert report["images"] == 1 and report["miou"] == pytest.approx(expected["miou"], abs=1e-9)
    assert report["ignored_fraction"] == pytest.approx((pseudo == 255).mean())
    assert set(report["per_class_iou"]) == {"background", "horse"}


def _one_horse(tmp_path: Path, truth: np.ndarray) -> tuple[list[dict], Path]:
    """A one-image row list for horse001 and a --gt-dir holding ``truth`` as its PNG."""
    root = tmp_path / "gt"
    root.mkdir(exist_ok=True)
    Image.fromarray(truth.astype(np.uint8)).save(root / "horse001.png")
    return [{"image_id": "horse001", "uri": str(IMAGES / "horses/horse001.jpg"), "labels": ["horse"]}], root


def test_ground_truth_that_does_not_fit_is_refused_before_any_work(tmp_path, capsys):
    width, height = Image.open(IMAGES / "horses/horse001.jpg").size
    voc = classes_for(parse_request(["--input", "x", "--output", "y", "--class-list", "voc20"]), [])
    horse_only = ("background", "horse")
    # Another size: found up front, named with both sizes; main segments nothing.
    rows, root = _one_horse(tmp_path, np.zeros((height // 2, width), np.uint8))
    (problem,) = check_ground_truth(rows, root, horse_only, named=False)
    assert f"{width}×{height // 2}, its image {width}×{height}" in problem
    manifest = tmp_path / "one.jsonl"
    manifest.write_text(json.dumps(rows[0]) + "\n")
    argv = ["--input", str(manifest), "--output", str(tmp_path / "out"), "--gt-dir", str(root), *FAST]
    assert pseudolabel_main(argv) == 2
    assert "nothing was segmented" in capsys.readouterr().err and not (tmp_path / "out" / "run-weak").exists()
    # 0/1 ground truth under a 21-class list is ambiguous (1 = aeroplane) until its values are named.
    binary = np.zeros((height, width), np.uint8)
    binary[height // 3 :, width // 3 :] = 1
    rows, root = _one_horse(tmp_path, binary)
    (problem,) = check_ground_truth(rows, root, voc, named=False)
    assert "--gt-classes" in problem and "'aeroplane'" in problem
    names = ground_truth_names("background,horse", voc)
    assert check_ground_truth(rows, root, names, named=True) == []
    lookup = ground_truth_lookup(names, voc)
    assert lookup[0] == 0 and lookup[1] == voc.index("horse") and lookup[255] == 255 and lookup[2] == -1
    with pytest.raises(ValueError, match="'zebra'"):
        ground_truth_names("background,zebra", horse_only)
    # A value without a name is a problem, per image.
    rows, root = _one_horse(tmp_path, binary * 7)
    (problem,) = check_ground_truth(rows, root, horse_only, named=False)
    assert "values [7] have no class name" in problem
    with pytest.raises(ConfigError, match="include voc in --format"):  # a quality report needs the VOC PNGs
        parse_request([*argv, "--format", "coco"])


def test_quality_skips_a_ground_truth_that_stopped_fitting(tmp_path):
    labels = tmp_path / "voc" / "SegmentationClassAug"
    labels.mkdir(parents=True)
    gt = tmp_path / "gt"
    gt.mkdir()
    for stem, truth_shape in (("a", (8, 8)), ("b", (8, 6))):
        Image.fromarray(np.ones((8, 8), np.uint8)).save(labels / f"{stem}.png")
        Image.fromarray(np.ones(truth_shape, np.uint8)).save(gt / f"{stem}.png")
    classes = ("background", "horse")
    rows = [{"image_id": "a"}, {"image_id": "b"}]
    report = quality(rows, classes, tmp_path / "voc", gt, ground_truth_lookup(classes, classes))
    assert report["images"] == 1 and report["per_class_iou"]["horse"] == 1.0
    assert list(report["skipped"]) == ["b"] and "size" in report["skipped"]["b"]


def test_image_sizes_for_the_ground_truth_check_come_from_the_header(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    plain, profiled = tmp_path / "plain.jpg", tmp_path / "profiled.jpg"
    photo.save(plain, quality=95)
    photo.save(profiled, quality=95, icc_profile=bytes(200_000))  # a header longer than the prefix read
    reads = []
    original = quality_module.read_bytes
    monkeypatch.setattr(quality_module, "read_bytes", lambda uri, *args: reads.append(args) or original(uri, *args))
    assert header_size(str(plain)) == (300, 400) and reads == [(0, quality_module.HEADER_BYTES)]
    assert header_size(str(profiled)) == (300, 400) and reads[-1] == ()  # fell back to the whole file
    assert plain.stat().st_size > 2 * quality_module.HEADER_BYTES  # so the first read was a part of the file
