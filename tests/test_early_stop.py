"""A capturing forward stops after the last module its configs read, with identical captures."""

from __future__ import annotations

import pytest
import torch

from dsseg.spec import MethodSpec


@pytest.fixture(scope="module")
def backbones():
    from dsseg.model.backbone import load_backbone

    return {name: load_backbone(name, device="cpu") for name in ("tiny", "tiny-sd3")}


def capture_twice(backbone, method: str, params: dict):
    """The extractor's capture with and without the early stop, and which top-level parts ran."""
    from dsseg.model.extract import AttentionExtractor

    extraction = MethodSpec(method, params).resolved.extraction
    extractor = AttentionExtractor(backbone, extraction)
    side = extraction.preparation.image_size // 8
    channels = 16 if backbone.family == "mmdit" else 4
    latents = torch.randn(1, 1, channels, side, side, generator=torch.Generator().manual_seed(0))
    ran: list[str] = []
    parts = (
        list(backbone.denoiser.transformer_blocks)
        if backbone.family == "mmdit"
        else [backbone.denoiser.mid_block, *backbone.denoiser.up_blocks]
    )
    hooks = [part.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, part in enumerate(parts)]
    outputs = {}
    try:
        for early_stop in (False, True):
            extractor.early_stop = early_stop
            ran.clear()
            outputs[early_stop] = (extractor.capture_stacked(latents, extractor.condition), list(ran))
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def assert_same_capture(full, stopped) -> None:
    for kind in (0, 1):
        assert full[kind].keys() == stopped[kind].keys()
        for grid in full[kind]:
            assert torch.equal(full[kind][grid], stopped[kind][grid])
    assert (full[2] is None) == (stopped[2] is None)
    if full[2] is not None:
        assert torch.equal(full[2], stopped[2])


def test_diffcuts_down_path_layer_skips_the_mid_and_up_blocks(backbones):
    outputs = capture_twice(backbones["tiny"], "diffcut", {"image_size": 256})
    (full, ran_full), (stopped, ran_stopped) = outputs[False], outputs[True]
    assert_same_capture(full, stopped)
    assert ran_full == [0, 1, 2, 3, 4] and ran_stopped == []  # mid block, then up blocks 0..3: none ran


def test_seg4diffs_block_9_skips_the_later_blocks(backbones):
    outputs = capture_twice(backbones["tiny-sd3"], "seg4diff", {"image_size": 256})
    (full, ran_full), (stopped, ran_stopped) = outputs[False], outputs[True]
    assert_same_capture(full, stopped)
    assert ran_full == list(range(12)) and ran_stopped == list(range(10))


def test_a_capture_of_every_level_runs_to_the_last_up_block(backbones):
    outputs = capture_twice(backbones["tiny"], "diffseg", {"image_size": 256})
    (full, ran_full), (stopped, ran_stopped) = outputs[False], outputs[True]
    assert_same_capture(full, stopped)
    assert ran_stopped == [0, 1, 2, 3] and ran_full == [0, 1, 2, 3, 4]  # the last up block stops inside


def test_the_coarse_levels_only_stop_before_the_finest_up_block(backbones):
    outputs = capture_twice(backbones["tiny"], "diffseg", {"image_size": 256, "resolutions": [16, 8]})
    (full, _), (stopped, ran_stopped) = outputs[False], outputs[True]
    assert_same_capture(full, stopped)
    assert set(stopped[0]) == {(16, 16), (8, 8)} and ran_stopped == [0, 1, 2]  # stops inside up block 2 (16²)


def test_the_benchmarks_full_forward_turns_the_stop_off(backbones):
    from dsseg.benchmark.latency import LatencyRequest, full_forward
    from dsseg.segmenter import Segmenter

    specs = [MethodSpec("diffcut", {"image_size": 256}), MethodSpec("diffcut", {"image_size": 256, "timestep": 100})]
    segmenter = Segmenter(backbones["tiny"], specs)
    assert len(segmenter.groups) == 2 and all(group.extractor.early_stop for group in segmenter.groups)
    full_forward(segmenter, LatencyRequest(method="diffcut", full_forward=True))
    assert not any(group.extractor.early_stop for group in segmenter.groups)
