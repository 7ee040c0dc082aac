"""End to end: jobs/evaluate.py on a few real images with the tiny backbone — metrics.json,
per_image.parquet, report.md and report.html (opened in headless Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import DATA, GROUND_TRUTH, IMAGES, TINY
from oracles import official_diffseg as official
from PIL import Image

from dsseg.commands import main as dsseg_main
from dsseg.commands.evaluate import build_parser as evaluate_parser
from dsseg.commands.evaluate import request_of
from dsseg.evaluation.datasets import load_dataset
from dsseg.evaluation.metrics import score
from dsseg.evaluation.scoring import ConfigScores, ModelFrame, aligned, class_ids, score_row, to_model_frame
from dsseg.io.frames import resize_labels_tf
from dsseg.io.images import resize_bilinear
from dsseg.io.masks import decode_segments, encode_labels


def evaluate_main(argv: list[str]) -> int:
    """``dsseg evaluate ARGV``'s exit status."""
    return dsseg_main(["evaluate", *argv])


def evaluation_request(argv: list[str]):
    """The typed request ``dsseg evaluate ARGV`` runs."""
    return request_of(evaluate_parser().parse_args(argv))


def _horse_root(root: Path) -> Path:
    for name in ("horse001.jpg",):
        (root / "rgb").mkdir(parents=True, exist_ok=True)
        (root / "figure_ground").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(IMAGES / "horses" / name, root / "rgb" / name)
        shutil.copyfile(GROUND_TRUTH / "horse001_figure_ground.jpg", root / "figure_ground" / name)
    # A second image: the BSDS photo with the horse mask resized onto it (any labelled pair will do).
    shutil.copyfile(IMAGES / "135069.jpg", root / "rgb" / "photo.jpg")
    mask = Image.open(GROUND_TRUTH / "horse001_figure_ground.jpg").resize(Image.open(IMAGES / "135069.jpg").size)
    mask.save(root / "figure_ground" / "photo.jpg")
    return root


def test_model_frame_labels_equal_the_official_preprocessing():
    rng = np.random.default_rng(0)
    for shape in [(375, 500), (481, 321), (1024, 2048), (128, 256), (300, 300)]:
        label = rng.integers(0, 27, shape).astype(np.uint8)
        np.testing.assert_array_equal(to_model_frame(label, ModelFrame()), official.process_label(label))
    labels = np.arange(6 * 10).reshape(6, 10)
    np.testing.assert_array_equal(to_model_frame(labels, ModelFrame(image_size=64)), official.process_label(labels, 64))
    pred, gt = aligned(np.zeros((3, 5), int), np.ones((6, 10), int), "label")
    assert pred.shape == gt.shape == (6, 10)


def test_label_and_image_resizing_equal_tensorflows_own_output():
    stored = np.load(DATA / "tf_resize.npz")
    pairs = [name for name in stored.files if name.startswith("nearest_")]
    assert len(pairs) == 10
    for name in pairs:
        size_in, size_out = (int(v) for v in name.split("_")[1:])
        column = np.arange(size_in).reshape(size_in, 1)
        np.testing.assert_array_equal(resize_labels_tf(column, (size_out, 1))[:, 0], stored[name], err_msg=name)
    # The model input: TF keeps float32, dsseg rounds to 8 bits (at most half a grey level apart).
    ours = resize_bilinear(stored["bilinear_input"], (32, 40)).astype(np.float32)
    assert np.abs(ours - stored["bilinear_32x40"]).max() <= 0.5 + 1e-3


def test_model_frame_scores_without_resampling_the_prediction():
    gt = np.random.default_rng(1).integers(0, 4, (481, 321))
    truth = to_model_frame(gt, ModelFrame())
    pred, aligned_truth = aligned(truth.copy(), gt, "model")
    assert score([pred], [aligned_truth], 4)["miou"] == pytest.approx(100.0)  # no shifted row or column
    with pytest.raises(ValueError, match="mask_frame='model'"):
        aligned(np.zeros(gt.shape, int), gt, "model")  # a row drawn at the original size cannot be scored there


def _diffcut_label_at_128(label: np.ndarray) -> np.ndarray:
    """What DiffCut's released evaluation scores: its dataloader's crop (torchvision's CenterCrop of
    side min − 1, offsets by Python's round) and NEAREST_EXACT resize to 1024², then eval_diffcut.py's
    F.interpolate to 128² (PyTorch's default nearest), written with torch's own resizes."""
    import torch
    import torch.nn.functional as F

    side = min(label.shape) - 1
    top, left = round((label.shape[0] - side) / 2), round((label.shape[1] - side) / 2)
    crop = torch.from_numpy(label[top : top + side, left : left + side].astype(np.float32))[None, None]
    full = F.interpolate(crop, size=(1024, 1024), mode="nearest-exact")
    return F.interpolate(full, size=(128, 128))[0, 0].numpy().astype(label.dtype)


def test_diffcut_frame_scores_at_128_as_the_released_evaluation():
    from dsseg.io.images import plan_geometry

    assert plan_geometry((480, 640), 1024, "diffcut_crop").box == (0, 80, 479, 479)  # 80.5 → 80: halves to even
    assert plan_geometry((400, 402), 1024, "diffcut_crop").box == (0, 2, 399, 399)  # 1.5 → 2
    assert plan_geometry((1024, 2048), 1024, "diffcut_crop").box == (0, 512, 1023, 1023)
    rng = np.random.default_rng(2)
    frame = ModelFrame(1024, "diffcut_crop", score_size=128)
    for shape in [(480, 640), (427, 640), (1024, 2048), (640, 425), (333, 334)]:
        gt = rng.integers(0, 27, shape).astype(np.int64)
        cells = rng.integers(0, 9, (128, 128))
        model_frame_masks = cells.repeat(8, 0).repeat(8, 1)  # the job's 1024² masks of 128² labels
        pred, truth = aligned(model_frame_masks, gt, "model", frame)
        np.testing.assert_array_equal(truth, _diffcut_label_at_128(gt), err_msg=str(shape))
        np.testing.assert_array_equal(pred, cells)  # the prediction comes back at its own 128² grid
    with pytest.raises(ValueError, match="score_size"):
        ModelFrame(512, "center_crop", score_size=1024)


def test_class_names_to_ids():
    segments = [
        {"segment_id": 0, "label": "background"},
        {"segment_id": 1, "label": "horse"},
        {"segment_id": 2, "label": "ignore"},
    ]
    ids = class_ids(np.array([[0, 1, 2]]), segments, ("background", "horse"))
    np.testing.assert_array_equal(ids, [[0, 1, 2]])  # "ignore" → 2 = no class
    assert class_ids(np.array([[0]]), [{"segment_id": 0, "label": None}], ("a",)) is None


def test_score_row_equals_the_metrics_module(tmp_path):
    dataset = load_dataset("horse", _horse_root(tmp_path))
    sample = dataset.samples()[0]
    gt = dataset.load_label(sample)
    pred = np.zeros(gt.shape, dtype=np.int32)
    pred[:, gt.shape[1] // 2 :] = 1
    row = {
        "image_id": sample.image_id,
        "config_id": "c",
        "method": "diffseg",
        "status": "ok",
        "height": gt.shape[0],
        "width": gt.shape[1],
    }
    row["segments"] = [s | {"label": None} for s in encode_labels(pred)]
    scores, record = score_row(row, dataset, sample, "label")
    assert isinstance(scores, ConfigScores) and scores.scored == 1
    assert record["miou"] == pytest.approx(score([pred], [gt], 2)["miou"], abs=1e-9)
    assert "semantic" not in scores.results()


def test_evaluate_job_writes_metrics_and_reports(ray_local, tmp_path):
    root = _horse_root(tmp_path / "horse")
    out = tmp_path / "eval"
    argv = [
        "--dataset", "horse", "--root", str(root), "--output", str(out), "--backbone", "tiny", "--device", "cpu",
        "--methods", "diffseg,openvocab", "--param", "image_size=128", "--report-images", "1",
    ]  # fmt: skip
    assert evaluate_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 2 and metrics["frame"] == "label"
    by_method = {c["method"]: c for c in metrics["configs"].values()}
    for config in by_method.values():
        assert config["images"] == 2 and config["failed"] == 0
    assert "semantic" in by_method["openvocab"] and "semantic" not in by_method["diffseg"]
    records = pq.read_table(out / "per_image.parquet").to_pylist()
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}
    for config_id, config in metrics["configs"].items():  # the per-image average is the mean of the images' own scores
        own = [r["miou"] for r in records if r["config_id"] == config_id]
        assert config["per_image_avg"]["miou"] == pytest.approx(np.mean(own), abs=1e-9)
    # dsseg explore OUTPUT opens an evaluation: its rows from run/, its per-image scores beside them.
    from dsseg.explore.outputs import OutputBrowser

    browser = OutputBrowser(str(out))
    assert browser.index.num_rows == 4 and browser.score_columns[:2] == ("miou", "acc")
    diffseg_id = next(c for c, v in metrics["configs"].items() if v["method"] == "diffseg")
    ranked = sorted((r["miou"], r["image_id"]) for r in records if r["config_id"] == diffseg_id)
    entries = browser.query(diffseg_id, "miou")
    assert entries.column("image_id").to_pylist() == [image_id for _, image_id in ranked]
    row = browser.rows(entries.slice(0, 1))[0]
    assert browser.image(row).shape[:2] == decode_segments(row["segments"]).shape  # the image in its masks' frame
    run_configs = json.loads((out / "run" / "config.json").read_text())["configs"]
    assert len(run_configs) == 2 and all(
        '"geometry": "aspect"' in json.dumps(c) for c in run_configs
    )  # full-size scoring: whole image
    report = (out / "report.md").read_text()
    assert (
        "Per-image Hungarian, accumulated over the dataset" in report
        and "| diffseg image_size=128 | no preset | 2 |" in report
    )
    assert "Open vocabulary" in report

    html = (out / "report.html").read_text()
    diffseg_acc = f"{metrics['configs'][diffseg_id]['per_image']['acc']:.1f}"
    row_html = f"<tr><td>diffseg image_size=128</td><td>no preset</td><td>2</td><td>{diffseg_acc}</td>"
    assert "<section id='metrics'>" in html and row_html in html  # the numbers of report.md, as a table
    assert "<th>mIoU</th>" in html and html.index("<section id='metrics'>") < html.index("<img")
    pictures = re.findall(r"src='([^']+)'", html)
    assert len(pictures) == 2 * 4  # two images (best, worst), each: image, ground truth, two configs
    assert all((out / p).is_file() for p in pictures)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")  # .ci/run installs Debian's
    if chromium is not None:
        shot = tmp_path / "shot.png"
        run = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
             "--window-size=1400,1800", (out / "report.html").as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert "dsseg-report: 8 images, 0 broken" in run.stderr, run.stderr[-2000:]
        pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
        assert (pixels.min(axis=1) < 200).mean() > 0.1  # pictures below the tables, not a blank page
        assert len(np.unique(pixels, axis=0)) > 1000  # photographs and overlays drawn

    # A second evaluation into the same output scores only its own config and images.
    common = ["--dataset", "horse", "--root", str(root), "--output", str(out), *TINY, "--report-images", "1"]
    assert evaluate_main([*common, "--param", "image_size=64", "--limit", "1"]) == 0
    rescored = json.loads((out / "metrics.json").read_text())
    (config,) = rescored["configs"].values()
    assert rescored["images"] == 1 and config["images"] == 1 and config["params"]["image_size"] == 64
    assert [r["image_id"] for r in pq.read_table(out / "per_image.parquet").to_pylist()] == ["horse001"]
    other = _horse_root(tmp_path / "other")
    assert evaluate_main([*common[:3], str(other), *common[4:]]) == 2  # another dataset's ids could collide: refused
    if chromium is None:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium): the report was not opened")


def test_markdown_tables_become_html_tables_and_text_is_escaped():
    from dsseg.evaluation.report import markdown_to_html

    text = "## Results <1>\n\n| config | mIoU |\n|---|---|\n| a<b | 12.5 (43.6) |\n\n```\nx & y\n```\n- a note"
    assert markdown_to_html(text).splitlines() == [
        "<h3>Results &lt;1&gt;</h3>",
        "<table><tr><th>config</th><th>mIoU</th></tr>",
        "<tr><td>a&lt;b</td><td>12.5 (43.6)</td></tr>",
        "</table>",
        "<pre>x &amp; y</pre>",
        "<li>a note</li>",
    ]
