"""The benchmark's straightforward-vs-ours stage comparisons compute the same results."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest

from dsseg.benchmark import comparisons
from dsseg.benchmark.comparisons import (
    StageComparison,
    compare_aggregate,
    compare_capture,
    compare_rle,
    compare_upsample,
)
from dsseg.commands import main as dsseg_main
from dsseg.io.images import plan_geometry
from dsseg.model.extract import to_model_input
from dsseg.segmenter import Segmenter


@pytest.fixture(scope="module")
def bundle_and_images(tiny, bsds_image):
    segmenter = Segmenter(tiny, "diffseg", {"image_size": 128})
    pixels, geometry = segmenter.prepare(bsds_image)
    images = to_model_input(pixels[None], tiny.device, tiny.dtype)
    return segmenter, images, segmenter.groups[0].extractor(images), geometry


def test_capture_keeping_every_head_gives_our_level_maps(bundle_and_images):
    segmenter, images, _, _ = bundle_and_images
    assert compare_capture(segmenter.groups[0].extractor, images).difference < 1e-4
    up_only = Segmenter(segmenter.backbone, "diffseg", {"image_size": 128, "blocks": ("up",)})
    assert compare_capture(up_only.groups[0].extractor, images).difference < 1e-4  # the same layers on both sides


def test_each_side_of_the_capture_comparison_gets_its_own_time(bundle_and_images, monkeypatch):
    """The kept-heads forward's time goes to straightforward_ms and ours to ours_ms (the clock made
    deterministic: 7 ms for a call that runs the kept-heads processors, 1 ms otherwise)."""
    segmenter, images, _, _ = bundle_and_images
    keep_all_heads, inside = comparisons.keep_all_heads, []

    @contextmanager
    def marked_keep_all_heads(unet):
        with keep_all_heads(unet) as kept:
            inside.append(True)
            yield kept

    def fixed_clock(function, device):
        inside.clear()
        result = function()
        return result, (7.0 if inside else 1.0), None

    monkeypatch.setattr(comparisons, "keep_all_heads", marked_keep_all_heads)
    monkeypatch.setattr(comparisons, "timed", fixed_clock)
    comparison = compare_capture(segmenter.groups[0].extractor, images)  # one image: ms per image as timed
    assert (comparison.ours_ms, comparison.straightforward_ms, comparison.record()["speedup"]) == (1.0, 7.0, 7.0)


def test_the_records_speed_up_is_the_straightforward_time_over_ours():
    from dsseg.benchmark.latency import comparison_record

    record = StageComparison("unet", "kept heads", 4.0, 10.0, 0.0, "max_abs_difference").record()
    assert (record["ours_ms"], record["straightforward_ms"], record["speedup"]) == (4.0, 10.0, 2.5)
    assert StageComparison("rle", "masks", 0.0, 3.0, 0.0, "fraction").record()["speedup"] == 3e9  # no ZeroDivision
    labels = np.array([[0, 0, 1], [2, 2, 1]])
    method = comparison_record("aggregate+segment (DiffSeg)", 20.0, 900.0, labels, (labels + 1) % 3)
    assert (method["speedup"], method["segments"], method["agreement"]) == (45.0, [3, 3], 1.0)


def test_float64_aggregation_matches(bundle_and_images):
    _, _, bundle, _ = bundle_and_images
    assert compare_aggregate(bundle.self_attention).difference < 1e-5
    assert compare_aggregate(bundle.self_attention, (16, 8), (0.7, 0.3)).difference < 1e-5


def test_upsample_and_rle_agree_with_the_straightforward_way():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, (16, 16)) * 3  # ids with gaps, as a method leaves them
    geometry = plan_geometry((300, 451), 128, "center_crop")
    upsample = compare_upsample(labels, geometry)
    assert upsample.difference == 0.0
    full = rng.integers(0, 5, (60, 90))
    assert compare_rle(full).difference == 0.0


def test_the_benchmark_runs_as_installed_and_compare_runs_from_the_checkout(tmp_path, capsys):
    """No --image: the synthetic JPEG drawn in process (no file of the checkout); --compare times the
    method against its float64 transcription, loaded from tests/oracles."""
    from dsseg.benchmark.image import NAME

    report_path = tmp_path / "report.json"
    argv = ["--backbone", "tiny", "--device", "cpu", "--param", "image_size=128", "--param", "kl_threshold=0.3"]
    assert dsseg_main(["benchmark", *argv, "--repeats", "1", "--compare", "--json", str(report_path)]) == 0
    assert capsys.readouterr().out == ""  # the report goes to --json only
    report = json.loads(report_path.read_text())
    assert "NaN" not in report_path.read_text()  # strict JSON: stages that did not run are null
    assert report["image"] == NAME and report["runs"][0]["ms_per_image"]["decode"] > 0
    stages = {record["stage"]: record for record in report["comparison"]["stages"]}
    method = stages["aggregate+segment (DiffSeg)"]
    assert method["segments"][0] == method["segments"][1] >= 2 and method["agreement"] == 1.0
    assert stages["aggregate"]["max_abs_difference"] < 1e-5


def test_compare_outside_a_source_checkout_says_it_needs_one(tmp_path, monkeypatch, capsys):
    from dsseg.benchmark import checkout

    monkeypatch.setattr(checkout, "ORACLES", tmp_path / "tests" / "oracles")  # an installed wheel: no tests/
    assert dsseg_main(["benchmark", "--backbone", "tiny", "--device", "cpu", "--compare"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("dsseg benchmark: error: --compare: ") and "source checkout" in error
