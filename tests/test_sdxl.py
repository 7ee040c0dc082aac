"""SDXL-class backbones on the in-process ``tiny-sdxl``: conditioning, capture, every method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracles.attention import direct_self_attention, self_attention_inputs

from dsseg.model.attention import capture_attention
from dsseg.model.config import Capture


@pytest.fixture(scope="module")
def tiny_xl():
    from dsseg.model.backbone import load_backbone

    return load_backbone("tiny-sdxl", device="cpu")


def test_the_condition_packs_both_encoders_states_and_the_pooled_embedding(tiny_xl):
    condition = tiny_xl.encode_prompt("a horse")
    ids = tiny_xl.tokenizer("a horse", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        first = tiny_xl.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        second = tiny_xl.text_encoder_2(ids, output_hidden_states=True)
    assert tiny_xl.is_xl and condition.shape == (1, 78, 64)
    torch.testing.assert_close(condition[:, :77], torch.cat([first, second.hidden_states[-2]], dim=-1))
    torch.testing.assert_close(condition[:, 77, :32], second.text_embeds)
    assert not condition[:, 77, 32:].any()


def test_captured_probabilities_equal_direct_softmax_on_sdxl_blocks(tiny_xl):
    """Several transformer layers per block, attention at 1/2 and 1/4 of the latent only."""
    unet, latents = tiny_xl.unet, torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    condition = tiny_xl.encode_prompt("").expand(2, -1, -1)
    with self_attention_inputs(unet) as inputs, torch.no_grad():
        plain = tiny_xl.run_unet(latents, 50, condition)
        with capture_attention(unet, Capture(), (16, 16)) as store:
            captured_output = tiny_xl.run_unet(latents, 50, condition)
    torch.testing.assert_close(captured_output, plain, atol=1e-5, rtol=1e-4)  # capture changes nothing
    expected = direct_self_attention(unet, inputs)
    counts = store.layer_counts("self")
    assert set(counts) == {(8, 8), (4, 4)} and counts == {(8, 8): 10, (4, 4): 12}  # depth 2 per block
    for (h, w), maps in store.means("self").items():
        torch.testing.assert_close(maps, expected[h * w], atol=1e-6, rtol=1e-4)


# Parameters under which each method splits the tiny SDXL's (random-weight, near-uniform) maps of the
# test photograph at 128²: DiffSeg finds 4 segments at τ 0.1 (1 at 0.3), NCut 29 at threshold 0.99
# (1 at 0.97 and below: its root cut costs between 0.97 and 0.98), openvocab background + both classes, DiffCut 12.
@pytest.mark.parametrize(
    "method, params",
    [
        ("diffseg", {"kl_threshold": 0.1}),
        ("ncut", {"stopping": "threshold", "threshold": 0.99, "min_segment_size": 2}),
        ("openvocab", {"classes": ["horse", "grass"]}),
        ("diffcut", {"tau": 0.4}),
    ],
)
def test_every_method_segments_on_sdxl(tiny_xl, bsds_image, method, params):
    from dsseg import segment_image

    result = segment_image(bsds_image, method, tiny_xl, image_size=128, **params)
    assert result.labels.shape == bsds_image.shape[:2]
    ids = np.unique(result.labels)
    assert result.num_segments >= 2 and np.array_equal(ids, np.arange(result.num_segments))  # ids 0..S−1, all used
    if method == "openvocab":
        assert result.names == ["background", "horse", "grass"]


def test_diffcuts_layer_on_sdxl_is_the_last_of_the_down_path(tiny_xl):
    from dsseg.model.extract import feature_module

    block = tiny_xl.unet.down_blocks[-1].attentions[-1].transformer_blocks[-1]
    assert feature_module(tiny_xl.unet, "down:-1") is block.attn1


def test_the_segment_job_takes_an_sdxl_backbone(tmp_path):
    from helpers import IMAGES, decoded

    from dsseg.job.config import SegmentJob
    from dsseg.job.model_stage import SegmentWorker
    from dsseg.spec import MethodSpec

    job = SegmentJob(
        input=str(IMAGES), output=str(tmp_path), backbone="tiny-sdxl", device="cpu",
        configs=[MethodSpec("diffseg", {"image_size": 128, "kl_threshold": 0.3})],
    )  # fmt: skip
    rows = SegmentWorker(job)(decoded(job, {"135069.jpg"})).to_pylist()
    assert len(rows) == 1 and rows[0]["status"] == "ok" and np.frombuffer(rows[0]["labels"], np.int32).size > 0


def test_the_sdxl_vae_stays_float32_in_half_precision():
    from dsseg.model.backbone import load_backbone

    half = load_backbone("tiny-sdxl", device="cpu", dtype="float16")
    assert next(half.vae.parameters()).dtype == torch.float32  # SDXL's VAE overflows in float16
    assert next(half.unet.parameters()).dtype == torch.float16
    assert next(load_backbone("tiny", device="cpu", dtype="float16").vae.parameters()).dtype == torch.float16
