"""Benchmark protocols as the papers measured them: presets (one published row, one name),
benchmark decoding in stored pixel order, a tuning split for openvocab, and clear errors."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import GROUND_TRUTH, IMAGES, ROOT, TINY
from PIL import Image

from dsseg.benchmark import manc_study
from dsseg.evaluation import evaluate as evaluate_command
from dsseg.evaluation.presets import PRESETS, get_preset, list_presets, matching_presets, settings_key
from dsseg.io.images import decode_image
from dsseg.job.config import SegmentJob
from dsseg.spec import MethodSpec

# ---- presets ------------------------------------------------------------------------------


def test_every_published_row_of_the_issue_has_a_preset_with_its_number():
    expected = {
        "diffseg-cocostuff27": ("per_image", {"acc": 72.5, "miou": 43.6}),
        "diffseg-cityscapes27": ("per_image", {"acc": 76.0, "miou": 21.2}),
        "dwc-manc-ncut": ("per_image", {"acc": 74.1, "f1": 60.8, "miou": 46.6}),
        "dwc-manc-ncut-four-levels": ("per_image", {"acc": 74.7, "f1": 60.6, "miou": 46.1}),
        "dwc-manc-ncut-two-levels": ("per_image", {"acc": 70.1, "f1": 56.4, "miou": 42.7}),
        "dwc-manc-ncut-one-level": ("per_image", {"acc": 63.9, "f1": 49.6, "miou": 36.4}),
        "dwc-random-walk": ("per_image", {"acc": 72.2, "f1": 56.9, "miou": 43.3}),
        "dwc-scaled-mincut-k1": ("per_image", {"acc": 45.9, "f1": 36.1, "miou": 23.8}),
        "dwc-scaled-mincut-k2": ("per_image", {"acc": 67.0, "f1": 54.4, "miou": 40.7}),
        "dwc-scaled-mincut-k3": ("per_image", {"acc": 71.2, "f1": 56.9, "miou": 42.4}),
        "dwc-scaled-mincut-k4": ("per_image", {"acc": 70.7, "f1": 55.8, "miou": 41.1}),
        "dwc-scaled-mincut-k5": ("per_image", {"acc": 70.0, "f1": 54.2, "miou": 39.6}),
        "dwc-scaled-mincut-three-levels": ("per_image", {"acc": 42.0, "f1": 32.0, "miou": 20.6}),
        "dwc-scaled-mincut-two-levels": ("per_image", {"acc": 37.2, "f1": 27.6, "miou": 17.0}),
        "dwc-scaled-mincut-one-level": ("per_image", {"acc": 36.1, "f1": 25.0, "miou": 15.3}),
        "diffcut-sd14-cocostuff27": ("per_image", {"miou": 31.3}),
        "diffcut-sd14-pamr-cocostuff27": ("per_image", {"miou": 45.2}),
        "diffcut-ssd1b-cocostuff27": ("per_image", {"miou": 46.1}),
        "diffcut-ssd1b-pamr-cocostuff27": ("per_image", {"miou": 49.1}),
        "diffcut-ssd1b-cityscapes27": ("per_image", {"miou": 28.4}),
        "diffcut-ssd1b-pamr-cityscapes27": ("per_image", {"miou": 30.6}),
        "dwc-cityscapes27": ("per_image", {"miou": 22.0}),
        "dwc-ade20k150": ("per_image", {"miou": 41.2}),
        "dwc-diffseg-per-image-avg": ("per_image_avg", {"acc": 72.6, "f1": 71.1, "miou": 34.1}),
        "dwc-ncut-oracle-merged": ("oracle_merged", {"acc": 83.6, "f1": 76.0, "miou": 64.5}),
        "diffsegmenter-voc2012": ("semantic", {"miou": 60.1}),
        "diffsegmenter-context60": ("semantic", {"miou": 27.5}),
        "diffsegmenter-coco-object": ("semantic", {"miou": 37.9}),
    }
    for name, (protocol, published) in expected.items():
        preset = get_preset(name)
        assert (preset.protocol, dict(preset.published)) == (protocol, published), name
    assert {f"dwc-scaled-mincut-k{k}" for k in range(1, 6)} <= set(PRESETS)
    assert get_preset("diffseg-cityscapes27").spec().resolved.params.kl_threshold == (0.9,) * 3
    for name in ("dwc-manc-ncut-four-levels", "dwc-random-walk", "dwc-dot-threshold", "dwc-scaled-mincut-k4"):
        four = get_preset(name).spec().resolved  # all four levels: the 8² one from the mid block
        assert four.params.resolutions == (64, 32, 16, 8) and four.extraction.capture.blocks == ("mid", "up"), name

    def levels(name: str) -> tuple[int, ...]:
        return get_preset(name).spec().resolved.params.resolutions

    assert levels("dwc-manc-ncut") == levels("dwc-scaled-mincut-three-levels") == (64, 32, 16)
    assert levels("dwc-manc-ncut-two-levels") == levels("dwc-scaled-mincut-two-levels") == (64, 32)
    assert levels("dwc-manc-ncut-one-level") == levels("dwc-scaled-mincut-one-level") == (64,)
    for preset in PRESETS.values():  # where each number comes from, and which reading takes the levels
        if preset.method == "diffcut":
            assert any(choice.startswith("the number: ") for choice in preset.choices), preset.name
            assert preset.score_size == 128 and preset.params["geometry"] == "diffcut_crop", preset.name
        if preset.row.startswith("Table 1"):
            assert any("§3.1" in choice for choice in preset.choices), preset.name
    with pytest.raises(ValueError, match="list-presets"):
        get_preset("diffseg-coco")


def test_list_presets_prints_every_setting_and_every_choice():
    text = list_presets()
    for preset in PRESETS.values():
        assert f"{preset.name}: {preset.row}" in text
        for choice in preset.choices:
            assert choice in text
    assert "timestep=300" in text and "noise='ddim_inversion'" in text and "inversion_steps=10" in text
    assert "not recorded in our references" not in text  # every row's number is in REFERENCES.md


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_runs_what_it_lists(name, tmp_path):
    from dsseg.evaluation.plan import make_plan

    preset = get_preset(name)
    argv = ["--preset", name, "--root", "unused", "--output", "unused"]
    if preset.candidates:  # the released lists are needed; their bytes are what the preset checks (by sha256)
        (tmp_path / "lists.json").write_text("{}")
        argv += ["--candidates", str(tmp_path / "lists.json")]
    plan = make_plan(evaluate_command.parse_args(argv))
    (spec,) = plan.configs
    assert spec.resolved == preset.spec().resolved  # the extraction and method configs, nothing added
    assert (plan.frame, plan.score_size, plan.backbone) == (preset.frame, preset.score_size, preset.backbone)
    assert plan.captioner == preset.captioner
    ran = dataclasses.replace(preset, params=spec.params, frame=plan.frame, score_size=plan.score_size)
    assert ran.describe() == preset.describe()  # what --list-presets prints is what runs
    tuned = {preset.tuning.param: preset.tuning.how} if preset.tuning else {}
    class_filter = f"candidates:sha256={preset.candidates.sha256}" if preset.candidates else plan.class_filter
    key = settings_key(spec, plan.frame, class_filter, next(iter(tuned), None), plan.score_size, plan.captioner)
    assert key == preset.key()
    matches = matching_presets(
        plan.dataset, spec, plan.frame, plan.backbone, class_filter, tuned, plan.options.get("split"), plan.captioner,
        plan.score_size,
    )  # fmt: skip
    assert name in [m.preset.name for m in matches]


def test_the_aspect_geometry_is_added_only_to_runs_without_a_preset_or_a_geometry():
    from dsseg.evaluation.plan import make_plan

    common = ["--root", "unused", "--output", "unused", "--dataset", "horse"]
    plan = make_plan(evaluate_command.parse_args([*common, "--methods", "diffseg,diffcut"]))
    assert plan.frame == "label"
    assert [s.resolved.extraction.preparation.geometry for s in plan.configs] == ["aspect", "squash"]  # diffcut's own
    plan = make_plan(evaluate_command.parse_args([*common, "--param", "geometry=center_crop"]))
    assert plan.configs[0].resolved.extraction.preparation.geometry == "center_crop"
    with pytest.raises(ValueError, match="--score-size samples the model frame"):
        make_plan(evaluate_command.parse_args([*common, "--score-size", "128"]))
    preset = get_preset("diffcut-ssd1b-cocostuff27")
    plan = make_plan(evaluate_command.parse_args(["--preset", preset.name, *common[:4], "--frame", "label"]))
    assert plan.score_size is None and plan.configs[0].params["geometry"] == "diffcut_crop"  # no override
    assert not matching_presets(plan.dataset, plan.configs[0], plan.frame, preset.backbone)  # another measurement


def test_a_config_matches_a_preset_only_with_all_its_settings():
    preset = get_preset("diffseg-cocostuff27")
    spec = MethodSpec("diffseg", {"kl_threshold": 1.1})  # the other settings are DiffSeg's defaults
    per_image = [
        m for m in matching_presets("cocostuff27", spec, "model", preset.backbone) if m.preset.protocol == "per_image"
    ]
    assert [m.preset.name for m in per_image] == ["diffseg-cocostuff27", "dwc-diffseg-globally-averaged"]
    assert all(m.same_backbone for m in per_image)
    assert {m.backbone for m in matching_presets("cocostuff27", spec, "model", "tiny")} == {"other"}
    assert {m.backbone for m in matching_presets("cocostuff27", spec, "model", str(ROOT))} == {
        "unverified"
    }  # a local folder
    assert not matching_presets("cocostuff27", spec, "model", preset.backbone, split="train2017")  # another split
    assert not matching_presets("cocostuff27", MethodSpec("diffseg", {"kl_threshold": 1.0}), "model", preset.backbone)
    assert not matching_presets("cocostuff27", spec, "label", preset.backbone)  # another frame, another measurement
    assert not matching_presets("cityscapes27", spec, "model", preset.backbone)  # τ 1.1 is the COCO row
    assert settings_key(spec, "model") == settings_key(
        MethodSpec("diffseg", {"kl_threshold": [1.1, 1.1, 1.1]}), "model"
    )
    # ADE20K: the full release stands in for SceneParsing
    ncut = get_preset("dwc-ade20k150")
    assert [m.preset.name for m in matching_presets("ade20k_full", ncut.spec(), "model", ncut.backbone)] == [
        "dwc-ade20k150"
    ]


def test_an_openvocab_preset_matches_with_its_oracle_threshold_released_lists_and_captioner(tmp_path):
    from dsseg.evaluation.presets import BLIP_LARGE

    preset = get_preset("diffsegmenter-voc2012")
    spec = MethodSpec("openvocab", {**preset.params, "background_threshold": 0.42})
    released = f"candidates:sha256={preset.candidates.sha256}"  # what a run reading the released bytes measures with
    args = ("voc2012", spec, "label", preset.backbone, released)
    assert not matching_presets(*args, captioner=BLIP_LARGE)  # a threshold nobody chose
    assert [
        m.preset.name for m in matching_presets(*args, {"background_threshold": "oracle"}, captioner=BLIP_LARGE)
    ] == [preset.name]  # chosen on the evaluated split, as the paper; val: the reader's default
    assert not matching_presets(*args, {"background_threshold": "split"}, captioner=BLIP_LARGE)  # another measurement
    assert not matching_presets(*args, {"background_threshold": "oracle"}, captioner="tiny")
    other = tmp_path / "lists.json"
    other.write_text('{"2007_000033": ["plane"]}')
    assert not matching_presets(
        "voc2012", spec, "label", preset.backbone, f"candidates:{other}", {"background_threshold": "oracle"},
        captioner=BLIP_LARGE,
    )  # other candidate lists  # fmt: skip
    coco = get_preset("diffsegmenter-coco-object")
    assert coco.split == "val2014_5k"
    coco_args = ("coco_object", coco.spec(), "label", coco.backbone, f"candidates:sha256={coco.candidates.sha256}")
    assert not matching_presets(*coco_args, {"background_threshold": "oracle"}, captioner=BLIP_LARGE)  # val2017
    assert matching_presets(*coco_args, {"background_threshold": "oracle"}, "val2014_5k", BLIP_LARGE)


def test_list_presets_and_bad_flags_exit_cleanly(capsys):
    evaluate = evaluate_command
    assert evaluate.main(["--list-presets"]) == 0
    assert "dwc-manc-ncut: COCO-Stuff-27" in capsys.readouterr().out
    assert evaluate.main(["--preset", "nope", "--root", "x", "--output", "y"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--root", "x", "--output", "y"])
    assert exit_info.value.code == 2 and "--dataset (or --preset)" in capsys.readouterr().err


def _cityscapes_root(root: Path) -> Path:
    """One Cityscapes val frame (256×128) in the flat layout of ../shared/data/cityscapes."""
    shutil.copyfile(
        IMAGES / "frankfurt_000000_000294_leftImg8bit.png", _mkdir(root) / "frankfurt_000000_000294_leftImg8bit.png"
    )
    shutil.copyfile(
        GROUND_TRUTH / "frankfurt_000000_000294_gtFine_labelIds.png",
        root / "frankfurt_000000_000294_gtFine_labelIds.png",
    )
    return root


def test_cityscapes_preset_end_to_end_reports_the_published_number(ray_local, tmp_path):
    root = _cityscapes_root(tmp_path / "cityscapes")
    out = tmp_path / "eval"
    argv = ["--preset", "diffseg-cityscapes27", "--root", str(root), "--output", str(out), *TINY]
    assert evaluate_command.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    (config,) = metrics["configs"].values()
    assert metrics["frame"] == "model" and config["presets"] == [{"name": "diffseg-cityscapes27", "backbone": "other"}]
    report = (out / "report.md").read_text()
    assert (
        "| diffseg-cityscapes27 | diffseg-cityscapes27 † | 1 |" in report and "(76.0)" in report and "(21.2)" in report
    )
    assert "percent; BSDS500 covering and PRI as fractions" in report
    rows = pq.read_table(out / "run" / "segments").to_pylist()
    assert {tuple(s["rle"]["size"]) for r in rows for s in r["segments"]} == {(512, 512)}  # scored in the model frame


@pytest.mark.slow  # ~15 s on 2 cores: the plan, the crop and the 128² scoring are tested apart by default
def test_a_diffcut_preset_crops_as_released_and_scores_at_128(ray_local, tmp_path):
    root = _cityscapes_root(tmp_path / "cityscapes")
    out = tmp_path / "eval"
    argv = ["--preset", "diffcut-ssd1b-cityscapes27", "--root", str(root), "--output", str(out), *TINY]
    assert evaluate_command.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    (config,) = metrics["configs"].values()
    assert (metrics["frame"], metrics["score_size"], config["failed"]) == ("model", 128, 0)
    assert config["presets"] == [{"name": "diffcut-ssd1b-cityscapes27", "backbone": "other"}]
    assert "Frame: `model, scored at 128²`" in (out / "report.md").read_text()
    (row,) = pq.read_table(out / "run" / "segments").to_pylist()
    assert {tuple(s["rle"]["size"]) for s in row["segments"]} == {(1024, 1024)}  # the 127² crop at 1024²
    assert (row["height"], row["width"]) == (128, 256)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- stored pixel order ---------------------------------------------------------------------


def _exif_rotated_jpeg(path: Path) -> np.ndarray:
    """A non-square JPEG whose EXIF says "rotate 90°" (orientation 6); returns its stored pixels."""
    rgb = np.asarray(Image.open(IMAGES / "horses" / "horse001.jpg").convert("RGB"))[:96, :160]
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=95, exif=exif)
    path.write_bytes(buffer.getvalue())
    return np.asarray(Image.open(path).convert("RGB"))


def test_benchmark_decoding_keeps_the_stored_pixel_order(tmp_path):
    stored = _exif_rotated_jpeg(tmp_path / "rotated.jpg")
    data = (tmp_path / "rotated.jpg").read_bytes()
    upright, upright_hw = decode_image(data)
    raw, raw_hw = decode_image(data, exif_transpose=False)
    assert upright_hw == (160, 96) and upright.shape[:2] == (160, 96)  # photos are turned upright
    assert raw_hw == (96, 160)
    np.testing.assert_array_equal(raw, stored)  # benchmarks: as stored, as their labels were drawn


def test_evaluation_reads_an_exif_rotated_image_aligned_with_its_label(tmp_path):
    from dsseg.evaluation.datasets import load_dataset
    from dsseg.evaluation.plan import make_plan
    from dsseg.evaluation.scoring import ModelFrame, score_row
    from dsseg.io.sources import list_inputs
    from dsseg.job.decode import decode_batch
    from dsseg.job.model_stage import SegmentWorker
    from dsseg.job.write import encode_row

    stored = _exif_rotated_jpeg(tmp_path / "rotated.jpg")
    label = np.zeros(stored.shape[:2], dtype=np.uint8)
    label[:, 80:] = 1  # left half class 0, right half class 1, in stored order
    Image.fromarray(label).save(tmp_path / "rotated.png")
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"image_id": ["rotated"], "uri": ["rotated.jpg"], "label": ["rotated.png"]}), manifest)
    argv = [
        "--dataset",
        "manifest",
        "--root",
        str(manifest),
        "--classes",
        "left,right",
        "--output",
        str(tmp_path / "eval"),
    ]
    args = evaluate_command.parse_args([*argv, "--frame", "model", "--param", "image_size=64", *TINY])
    plan = make_plan(args)
    dataset = load_dataset("manifest", manifest, **plan.options)
    job = evaluate_command.build_job(plan, args, dataset, plan.configs, tmp_path / "eval", None)
    assert (job.exif_transpose, job.mask_frame) == (False, "model")  # what an evaluation runs with
    # The job's three stages, in process: decode, model, write.
    items = [item | {"configs": job.config_ids()} for item in list_inputs(job.input)]
    decoded = decode_batch(
        pa.Table.from_pylist(items), job.preparation, job.max_pixels, job.max_image_side, job.exif_transpose
    )
    (row,) = [encode_row(model_row, job.mask_frame) for model_row in SegmentWorker(job)(decoded).to_pylist()]
    assert (row["status"], row["height"], row["width"]) == ("ok", 96, 160)  # not rotated to 160 × 96
    assert {tuple(s["rle"]["size"]) for s in row["segments"]} == {(64, 64)}  # masks in the model frame
    scores, record = score_row(row, dataset, dataset.samples()[0], "model", ModelFrame(64, "center_crop"))
    assert scores.scored == 1 and record["status"] == "ok"


def test_config_ids_of_earlier_outputs_stay_the_same():
    configs = (MethodSpec("diffseg"), MethodSpec("ncut"), MethodSpec("openvocab", {"classes": ("horse", "grass")}))
    job = SegmentJob(input=str(IMAGES), output="/tmp/unused", configs=configs, backbone="tiny", device="cpu")
    diffseg, ncut, openvocab = job.config_ids()
    assert (diffseg, ncut) == ("af1ac893760b", "9fd6f62c6a33")  # as written before these settings existed
    # openvocab now runs DiffSegmenter as released (issue 26: Compel's weighting, the first class token, each
    # class refined by its own prompt's self-attention, min–max at the image's size): earlier rows keep their id
    assert openvocab != "fc868dd07ad9"


def test_decode_and_mask_settings_change_config_ids_only_when_set(tmp_path):
    (tmp_path / "a.jpg").write_bytes((IMAGES / "135069.jpg").read_bytes())
    plain = SegmentJob(input=str(tmp_path), output=str(tmp_path / "out"))
    assert plain.rendering == {}
    benchmark = SegmentJob(input=str(tmp_path), output=str(tmp_path / "out"), exif_transpose=False, mask_frame="model")
    assert benchmark.rendering == {"exif_transpose": False, "mask_frame": "model"}
    assert plain.config_ids() != benchmark.config_ids()
    with pytest.raises(ValueError, match="mask_frame"):
        SegmentJob(input=str(tmp_path), output=str(tmp_path / "out"), mask_frame="crop")


# ---- open vocabulary ------------------------------------------------------------------------


def test_openvocab_without_classes_is_an_error_not_a_background_segment(tiny, tmp_path):
    from dsseg.segmenter import Segmenter

    segmenter = Segmenter(tiny, "openvocab", {"image_size": 64})
    pixels, geometry = segmenter.prepare(np.full((64, 64, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="no candidate classes"):
        segmenter(pixels[None], [geometry], classes=[[]])
    with pytest.raises(ValueError, match="no candidate classes"):
        segmenter(pixels[None], [geometry])
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {"image_id": ["a"], "uri": [str(IMAGES / "135069.jpg")], "classes": pa.array([[]], pa.list_(pa.string()))}
        ),
        manifest,
    )
    job = SegmentJob(input=str(manifest), output=str(tmp_path / "out"), configs=(MethodSpec("openvocab"),))
    with pytest.raises(ValueError, match="no \\(or an empty\\) class list"):
        job.check_classes([{"image_id": "a", "classes": []}])


def _voc_root(root: Path) -> Path:
    """A VOC 2012 layout: the horse photo (class 13) in train and val, the BSDS photo in train."""
    mask = (np.asarray(Image.open(GROUND_TRUTH / "horse001_figure_ground.jpg").convert("L")) > 127).astype(
        np.uint8
    ) * 13
    photo = Image.open(IMAGES / "horses" / "horse001.jpg").convert("RGB").resize(mask.shape[::-1])
    for name in ("horse_a", "horse_b"):
        photo.save(_mkdir(root / "JPEGImages") / f"{name}.jpg")
        Image.fromarray(mask).save(_mkdir(root / "SegmentationClass") / f"{name}.png")
    lists = _mkdir(root / "ImageSets" / "Segmentation")
    (lists / "train.txt").write_text("horse_a\n")
    (lists / "val.txt").write_text("horse_b\n")
    return root


def test_background_threshold_is_tuned_on_another_split_never_the_evaluated_one(ray_local, tmp_path):
    root = _voc_root(tmp_path / "voc")
    out = tmp_path / "eval"
    common = ["--root", str(root), "--output", str(out), *TINY, "--report-images", "1"]
    evaluate = evaluate_command
    refused = [
        "--dataset",
        "voc2012",
        "--methods",
        "openvocab",
        "--param",
        "image_size=64",
        "--tune-on",
        "val",
        *common,
    ]
    assert evaluate.main(refused) == 2  # the evaluated split
    assert (
        evaluate.main(["--dataset", "voc2012", "--methods", "diffseg", "--tune-on", "train", *common]) == 2
    )  # nothing to tune
    preset = ["--preset", "diffsegmenter-voc2012", "--captioner", "tiny", "--param", "image_size=64", *common]
    assert evaluate.main(preset) == 2  # the released candidate lists are needed
    candidates = tmp_path / "candidates.json"
    candidates.write_text(json.dumps({"image_similarity": {"/x/horse_a.jpg": ["horse"], "/x/horse_b.jpg": ["horse"]},
                                      "text_similarity": {"/x/horse_b.jpg": ["people"]}}))  # fmt: skip
    assert evaluate.main([*preset, "--candidates", str(candidates), "--tune-on", "train"]) == 0
    oracle = json.loads((out / "oracle_tuning.json").read_text())["0"]
    held_out = json.loads((out / "tune" / "train" / "tuning.json").read_text())["1"]
    for tuning, split in ((oracle, "val"), (held_out, "train")):
        scores = {float(v): s for v, s in tuning["scores"].items()}
        assert tuning["split"] == split and len(scores) == 45 and min(scores) == 0.3 and max(scores) == 0.74
        best = max(scores.values())
        assert tuning["value"] == min(v for v, s in scores.items() if s == best)  # the best; ties to the lower one
    assert oracle["oracle"] and not held_out["oracle"]
    configs = json.loads((out / "metrics.json").read_text())["configs"]
    assert [c["tuning"]["oracle"] for c in configs.values()] == [True, False]
    for config, tuning in zip(configs.values(), (oracle, held_out)):
        assert config["params"]["background_threshold"] == tuning["value"] and "semantic" in config
        assert config["presets"] == []  # image_size 64, a tiny captioner, other candidate lists: not the paper's
    (oracle_miou,) = {c["semantic"]["miou"] for c in configs.values() if c["tuning"]["oracle"]}
    assert oracle_miou == pytest.approx(max(oracle["scores"].values()))  # the oracle's score is its sweep's best
    report = (out / "report.md").read_text()
    assert (
        "oracle threshold" in report
        and f"background_threshold = {held_out['value']:g}, chosen on split 'train'" in report
    )


# ---- MAN-C scale ------------------------------------------------------------------------------


def test_manc_threshold_of_a_row_stochastic_walk_is_about_one_half():
    from dsseg.benchmark.planted import planted_attention, voronoi_regions

    study = manc_study
    attention = planted_attention(
        voronoi_regions(32, 4, seed=1), resolutions=(32, 16, 8), heads=8, affinity=6.0, locality=0.3, noise=2.5, seed=1
    )
    for graph in ("dot", "random_walk"):
        assert study.root_threshold(attention, graph, power=1) == pytest.approx(0.5, abs=0.02)
    summed = {r: maps * 8 for r, maps in attention.items()}  # heads summed, not renormalised: rows sum to 8
    assert study.root_threshold(summed, "dot", power=1) == pytest.approx(
        0.5, abs=0.02
    )  # dsseg renormalises what it is given
