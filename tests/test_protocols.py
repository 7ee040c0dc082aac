"""Benchmark protocols as the papers measured them: presets (one published row, one name),
benchmark decoding in stored pixel order, a tuning split for openvocab, and clear errors."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import DATA, GROUND_TRUTH, IMAGES, ROOT, TINY
from PIL import Image

from dsseg.benchmark import manc_study
from dsseg.commands import main as dsseg_main
from dsseg.commands.evaluate import build_parser as evaluate_parser
from dsseg.commands.evaluate import request_of
from dsseg.errors import ConfigError
from dsseg.evaluation.preset import settings_key
from dsseg.evaluation.presets import PRESETS, get_preset, list_presets, matching_presets
from dsseg.io.images import decode_image
from dsseg.job.config import SegmentJob
from dsseg.model.vocabularies import COCO80, CONTEXT59, VOC20
from dsseg.spec import MethodSpec

# ---- presets ------------------------------------------------------------------------------


def evaluate_main(argv: list[str]) -> int:
    """``dsseg evaluate ARGV``'s exit status."""
    return dsseg_main(["evaluate", *argv])


def evaluation_request(argv: list[str]):
    """The typed request ``dsseg evaluate ARGV`` runs."""
    return request_of(evaluate_parser().parse_args(argv))


# Where tests/data/references.md (a copy of the project's reference facts, ../shared/REFERENCES.md)
# publishes each preset's scores: its sentences, with <preset> for that preset's acc/f1/miou as the
# text writes them ("74.1/60.8/46.6") and <preset.metric> for one score. The numbers come from the
# presets; the test finds the filled-in sentence in the references.
PUBLISHED_IN_REFERENCES = (
    "Reported: COCO-Stuff-27 Acc <diffseg-cocostuff27.acc> / mIoU <diffseg-cocostuff27.miou>; Cityscapes Acc "
    "<diffseg-cityscapes27.acc> / mIoU <diffseg-cityscapes27.miou> (per-image Hungarian protocol).",
    "NCut threshold 0.3 → Acc <dwc-random-walk.acc> / F1 <dwc-random-walk.f1> / mIoU <dwc-random-walk.miou>.",
    "Dot product at NCut threshold 0.4: Acc <dwc-dot-threshold.acc> / F1 <dwc-dot-threshold.f1> / mIoU "
    "<dwc-dot-threshold.miou>.",
    "Acc/F1/mIoU k=1 <dwc-scaled-mincut-k1>, k=2 <dwc-scaled-mincut-k2>, k=3 <dwc-scaled-mincut-k3>, "
    "k=4 <dwc-scaled-mincut-k4>, k=5 <dwc-scaled-mincut-k5>.",
    "MAN-C NCut <dwc-manc-ncut-four-levels>, <dwc-manc-ncut>, <dwc-manc-ncut-two-levels>, <dwc-manc-ncut-one-level>; "
    "MAN-C Scaled MinCut <dwc-scaled-mincut-k1>, <dwc-scaled-mincut-three-levels>, <dwc-scaled-mincut-two-levels>, "
    "<dwc-scaled-mincut-one-level>.",
    "Best: MAN-C w/ NCut, resolutions {64,32,16}: Acc <dwc-manc-ncut.acc> / F1 <dwc-manc-ncut.f1> / mIoU "
    "<dwc-manc-ncut.miou> on COCO-Stuff-27; Cityscapes mIoU <dwc-cityscapes27.miou>; ADE20K <dwc-ade20k150.miou>.",
    "DiffSeg <dwc-diffseg-globally-averaged> global, <dwc-diffseg-per-image-avg> per-image, "
    "<dwc-diffseg-oracle-merged> merged; theirs <dwc-manc-ncut>, <dwc-ncut-per-image-avg>, <dwc-ncut-oracle-merged> "
    "(Acc/F1/mIoU).",
    "DiffCut paper (SSD-1B, with PAMR): COCO-Stuff-27 <diffcut-ssd1b-pamr-cocostuff27.miou>, Cityscapes "
    "<diffcut-ssd1b-pamr-cityscapes27.miou>,",
    "Seg4Diff's re-run (SSD-1B): 46.1 / <diffcut-ssd1b-cityscapes27.miou> / 62.0",
    "DWC Table 5 re-runs: SD 1.4 τ 0.2 <diffcut-sd14-cocostuff27.miou> without PAMR, "
    "<diffcut-sd14-pamr-cocostuff27.miou> with; SSD-1B τ 0.5 <diffcut-ssd1b-cocostuff27.miou> without PAMR, "
    "<diffcut-ssd1b-pamr-cocostuff27.miou> with (COCO-Stuff-27).",
    "Reported: zero-shot VOC <diffsegmenter-voc2012.miou> / Context <diffsegmenter-context60.miou> / COCO-Object "
    "<diffsegmenter-coco-object.miou> mIoU",
)


def test_every_preset_publishes_the_numbers_of_the_references():
    references = " ".join((DATA / "references.md").read_text().split())
    cited = set()

    def score(match: re.Match) -> str:
        preset = get_preset(match[1])
        metrics = (match[2],) if match[2] else ("acc", "f1", "miou")
        cited.update((preset.name, metric) for metric in metrics)
        return "/".join(f"{preset.published[metric]:.1f}" for metric in metrics)

    for sentence in PUBLISHED_IN_REFERENCES:
        filled = re.sub(r"<([a-z0-9-]+)(?:\.([a-z0-9]+))?>", score, sentence)
        assert filled in references, filled
    assert cited == {(name, metric) for name, preset in PRESETS.items() for metric in preset.published}

    def protocol(name: str) -> set[str]:
        return {preset.name for preset in PRESETS.values() if preset.protocol == name}

    assert protocol("per_image_avg") == {"dwc-diffseg-per-image-avg", "dwc-ncut-per-image-avg"}  # DWC Table 6
    assert protocol("oracle_merged") == {"dwc-diffseg-oracle-merged", "dwc-ncut-oracle-merged"}
    assert protocol("semantic") == {
        name for name in PRESETS if name.startswith(("diffsegmenter-", "diffcut-ssd1b-openvoc-"))
    }
    assert {preset.protocol for preset in PRESETS.values()} == {
        "per_image",
        "per_image_avg",
        "oracle_merged",
        "semantic",
    }


def test_each_preset_takes_the_levels_and_settings_of_its_row():
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
        if preset.method == "diffcut" and preset.params.get("naming") != "clip":
            assert any(choice.startswith("the number: ") for choice in preset.choices), preset.name
            assert preset.score_size == 128 and preset.params["geometry"] == "diffcut_crop", preset.name
        if preset.row.startswith("Table 1"):
            assert any("§3.1" in choice for choice in preset.choices), preset.name
    with pytest.raises(ValueError, match="list-presets"):
        get_preset("diffseg-coco")


def test_diffcut_open_vocabulary_presets_take_eval_diffcut_openvoc_settings():
    """eval_diffcut_openvoc.py's defaults: SSD-1B, t = 50, the crop at 1024², τ 0.5, α 10, masks assigned at
    1024² (mask_size=(1024, 1024)), PAMR(15, [1, 2, 4, 8, 12, 24, 32, 64]) + median, CLIP at the model input's
    size (COCO-Object at 2048²) among the dataset's classes with background first; scored in the 1024² frame."""
    presets = {name: preset for name, preset in PRESETS.items() if preset.params.get("naming") == "clip"}
    assert sorted(presets) == [
        "diffcut-ssd1b-openvoc-coco-object", "diffcut-ssd1b-openvoc-context60", "diffcut-ssd1b-openvoc-voc2012",
    ]  # fmt: skip
    expected = {"voc2012": (None, "val"), "context60": (None, "val"), "coco_object_curated": (2048, "val2017")}
    for name, preset in presets.items():
        resolved = preset.spec().resolved
        extraction, params, clip = resolved.extraction.flat(), resolved.params, resolved.clip
        assert preset.backbone == "segmind/SSD-1B" and preset.method == "diffcut" and preset.protocol == "semantic"
        assert (extraction["timestep"], extraction["image_size"], extraction["geometry"]) == (50, 1024, "diffcut_crop")
        assert (params.tau, params.alpha, params.assign_factor, params.upsample_factor) == (0.5, 10.0, 32, 1)
        assert (params.pamr_iterations, params.pamr_dilations) == (15, (1, 2, 4, 8, 12, 24, 32, 64))
        assert (preset.frame, preset.score_size) == ("model", None)  # scored at the 1024² masks' pixels
        assert (clip.clip_image_size, preset.split) == expected[preset.dataset], name
        assert clip.clip_background and clip.clip_model == "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"
        vocabulary = {"voc2012": VOC20, "context60": CONTEXT59, "coco_object_curated": COCO80}[preset.dataset]
        assert clip.classes == vocabulary  # + background first: the dataset's class names, in label order
        assert not preset.published and any("eval_diffcut_openvoc.py" in choice for choice in preset.choices), name


def test_list_presets_prints_every_setting_and_every_choice():
    text = list_presets()
    for preset in PRESETS.values():
        assert f"{preset.name}: {preset.row}" in text
        for choice in preset.choices:
            assert choice in text
    assert "timestep=300" in text and "noise='ddim_inversion'" in text and "inversion_steps=10" in text
    # Every row's number is in REFERENCES.md, except rows whose number could not be checked against
    # its paper (Seg4Diff's, quoted by other papers): those say so in a choice instead of citing it.
    # DiffCut's open-vocabulary rows: the paper's numbers in our references are its unsupervised ones.
    unrecorded = [preset for preset in PRESETS.values() if not preset.published]
    assert {preset.method for preset in unrecorded} == {"seg4diff", "diffcut"}
    assert all(preset.params.get("naming") == "clip" for preset in unrecorded if preset.method == "diffcut")
    assert all(any(choice.startswith("no published figure") for choice in preset.choices) for preset in unrecorded)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_runs_what_it_lists(name, tmp_path):
    from dsseg.evaluation.plan import make_plan

    preset = get_preset(name)
    argv = ["--preset", name, "--root", "unused", "--output", "unused"]
    if preset.candidates:  # the released lists are needed; their bytes are what the preset checks (by sha256)
        (tmp_path / "lists.json").write_text("{}")
        argv += ["--candidates", str(tmp_path / "lists.json")]
    plan = make_plan(evaluation_request(argv))
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
    plan = make_plan(evaluation_request([*common, "--methods", "diffseg,diffcut"]))
    assert plan.frame == "label"
    assert [s.resolved.extraction.preparation.geometry for s in plan.configs] == ["aspect", "squash"]  # diffcut's own
    plan = make_plan(evaluation_request([*common, "--param", "geometry=center_crop"]))
    assert plan.configs[0].resolved.extraction.preparation.geometry == "center_crop"
    with pytest.raises(ValueError, match="--score-size samples the model frame"):
        make_plan(evaluation_request([*common, "--score-size", "128"]))
    preset = get_preset("diffcut-ssd1b-cocostuff27")
    plan = make_plan(evaluation_request(["--preset", preset.name, *common[:4], "--frame", "label"]))
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
    from dsseg.evaluation.preset import BLIP_LARGE

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
    assert evaluate_main(["--list-presets"]) == 0
    assert "dwc-manc-ncut: COCO-Stuff-27" in capsys.readouterr().out
    assert evaluate_main(["--preset", "nope", "--root", "x", "--output", "y"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert evaluate_main(["--root", "x", "--output", "y"]) == 2
    assert "dsseg evaluate: error: --dataset: required, or --preset" in capsys.readouterr().err
    assert evaluate_main(["--list-presets", "names"]) == 0
    names = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in names] == list(PRESETS)  # one line per preset, in order


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
    assert evaluate_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    (config,) = metrics["configs"].values()
    assert metrics["frame"] == "model" and config["presets"] == [{"name": "diffseg-cityscapes27", "backbone": "other"}]
    report = (out / "report.md").read_text()
    assert "| diffseg-cityscapes27 | diffseg-cityscapes27 † | 1 |" in report
    published = get_preset("diffseg-cityscapes27").published
    assert set(published) == {"acc", "miou"} and all(f"({value:.1f})" in report for value in published.values())
    assert "percent; BSDS500 covering and PRI as fractions" in report
    rows = pq.read_table(out / "run" / "segments").to_pylist()
    assert {tuple(s["rle"]["size"]) for r in rows for s in r["segments"]} == {(512, 512)}  # scored in the model frame


@pytest.mark.slow  # ~15 s on 2 cores: the plan, the crop and the 128² scoring are tested apart by default
def test_a_diffcut_preset_crops_as_released_and_scores_at_128(ray_local, tmp_path):
    root = _cityscapes_root(tmp_path / "cityscapes")
    out = tmp_path / "eval"
    argv = ["--preset", "diffcut-ssd1b-cityscapes27", "--root", str(root), "--output", str(out), *TINY]
    assert evaluate_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    (config,) = metrics["configs"].values()
    assert (metrics["frame"], metrics["score_size"], config["failed"]) == ("model", 128, 0)
    assert config["presets"] == [{"name": "diffcut-ssd1b-cityscapes27", "backbone": "other"}]
    assert "Frame: `model, scored at 128²`" in (out / "report.md").read_text()
    (row,) = pq.read_table(out / "run" / "segments").to_pylist()
    assert {tuple(s["rle"]["size"]) for s in row["segments"]} == {(1024, 1024)}  # the 127² crop at 1024²
    assert (row["height"], row["width"]) == (128, 256)


@pytest.mark.slow  # ~35 s on 2 cores: the settings are tested apart by default (no CLIP weights here: tiny-clip)
def test_a_diffcut_open_vocabulary_preset_runs_end_to_end_with_another_clip(ray_local, tmp_path):
    root = _voc_root(tmp_path / "voc")
    out = tmp_path / "eval"
    argv = ["--preset", "diffcut-ssd1b-openvoc-voc2012", "--root", str(root), "--output", str(out), *TINY]
    assert evaluate_main([*argv, "--param", "clip_model=tiny-clip"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    (config,) = metrics["configs"].values()
    assert (metrics["frame"], metrics["score_size"], config["failed"]) == ("model", None, 0)
    assert "semantic" in config and config["presets"] == []  # another CLIP: the preset's settings, not its run
    (row,) = pq.read_table(out / "run" / "segments").to_pylist()
    assert {tuple(s["rle"]["size"]) for s in row["segments"]} == {(1024, 1024)}  # assigned and scored at 1024²
    assert {s["label"] for s in row["segments"]} <= {"background", *VOC20}


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
    args = evaluation_request([*argv, "--frame", "model", "--param", "image_size=64", *TINY])
    plan = make_plan(args)
    dataset = load_dataset("manifest", manifest, **plan.options)
    from dsseg.evaluation.evaluate import build_job

    job = build_job(plan, args, dataset, plan.configs, tmp_path / "eval", None)
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
    grey = np.full((64, 64, 3), 128, np.uint8)
    with pytest.raises(ConfigError, match="^classes: image 0 of the batch has no candidate classes"):
        segmenter.segment(segmenter.batch([grey], classes=[[]]))
    with pytest.raises(ConfigError, match="no candidate classes"):
        segmenter.segment(segmenter.batch([grey]))
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


def test_a_threshold_is_never_tuned_on_the_evaluated_split(tmp_path, capsys):
    """Refused while planning, before any model runs: tuning on the evaluated split, tuning a
    method with nothing to tune, and a DiffSegmenter preset without its released candidate lists."""
    root = _voc_root(tmp_path / "voc")
    common = ["--root", str(root), "--output", str(tmp_path / "eval"), *TINY]
    tuned = ["--dataset", "voc2012", "--methods", "openvocab", "--param", "image_size=64", *common]
    assert evaluate_main([*tuned, "--tune-on", "val"]) == 2
    assert "the evaluated split: choose background_threshold on another split" in capsys.readouterr().err
    assert evaluate_main(["--dataset", "voc2012", "--methods", "diffseg", "--tune-on", "train", *common]) == 2
    assert "no openvocab config is evaluated" in capsys.readouterr().err
    assert evaluate_main(["--preset", "diffsegmenter-voc2012", "--captioner", "tiny", *common]) == 2
    assert "--candidates FILE" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "run").exists()  # nothing was segmented


@pytest.mark.slow  # ~30 s on 2 cores: two segment jobs and their scoring; the refusals above run by default
def test_background_threshold_is_tuned_on_another_split_never_the_evaluated_one(ray_local, tmp_path):
    root = _voc_root(tmp_path / "voc")
    out = tmp_path / "eval"
    common = ["--root", str(root), "--output", str(out), *TINY, "--report-images", "1"]
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
    assert evaluate_main(refused) == 2  # the evaluated split
    assert (
        evaluate_main(["--dataset", "voc2012", "--methods", "diffseg", "--tune-on", "train", *common]) == 2
    )  # nothing to tune
    preset = ["--preset", "diffsegmenter-voc2012", "--captioner", "tiny", "--param", "image_size=64", *common]
    assert evaluate_main(preset) == 2  # the released candidate lists are needed
    candidates = tmp_path / "candidates.json"
    candidates.write_text(json.dumps({"image_similarity": {"/x/horse_a.jpg": ["horse"], "/x/horse_b.jpg": ["horse"]},
                                      "text_similarity": {"/x/horse_b.jpg": ["people"]}}))  # fmt: skip
    assert evaluate_main([*preset, "--candidates", str(candidates), "--tune-on", "train"]) == 0
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
