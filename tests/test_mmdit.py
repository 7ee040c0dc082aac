"""MM-DiT (SD3) backbones on the in-process ``tiny-sd3``: conditioning, joint-attention capture,
flow-matching noise, Seg4Diff against a transcription of its released code, and every method's
resolution or refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracles.attention import direct_joint_attention, joint_attention_inputs
from oracles.seg4diff_reference import seg4diff_unsupervised

from dsseg.errors import ConfigError
from dsseg.model.config import Capture, ExtractConfig


@pytest.fixture(scope="module")
def tiny_sd3():
    from dsseg.model.backbone import load_backbone

    return load_backbone("tiny-sd3", device="cpu")


def test_the_condition_is_clip_states_then_zero_t5_rows_then_the_pooled_row(tiny_sd3):
    condition = tiny_sd3.encode_prompt("a horse")
    ids = tiny_sd3.tokenizer("a horse", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        first = tiny_sd3.text_encoder(ids, output_hidden_states=True)
        second = tiny_sd3.text_encoder_2(ids, output_hidden_states=True)
    assert tiny_sd3.family == "mmdit" and condition.shape == (1, 77 + 77 + 1, 64)
    torch.testing.assert_close(condition[:, :77], torch.cat([first.hidden_states[-2], second.hidden_states[-2]], -1))
    assert not condition[:, 77:154].any()  # no T5: zeros, as diffusers' pipeline without text_encoder_3
    torch.testing.assert_close(condition[0, 154], torch.cat([first.text_embeds[0], second.text_embeds[0]]))


def test_captured_joint_attention_equals_a_direct_softmax_and_changes_no_output(tiny_sd3):
    from dsseg.model.joint_attention import capture_joint_attention

    transformer = tiny_sd3.transformer
    latents = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    condition = tiny_sd3.encode_prompt("a horse").expand(2, -1, -1)
    spec = Capture(cross_attention=True, layers=(3, 9))
    with joint_attention_inputs(transformer) as inputs, torch.no_grad():
        plain = tiny_sd3.denoise(latents, 500.0, condition)
        with capture_joint_attention(transformer, spec, (8, 8)) as store:
            captured = tiny_sd3.denoise(latents, 500.0, condition)
    torch.testing.assert_close(captured, plain, atol=1e-5, rtol=1e-4)  # the capture changes nothing
    assert (
        transformer.attn_processors["transformer_blocks.9.attn.processor"].__class__.__name__
        != "JointCapturingProcessor"
    )
    direct = direct_joint_attention(transformer, {i: inputs[i] for i in (3, 9)})
    expected = (direct[3] + direct[9]) / 2  # (B, 64, 64 + 154)
    assert store.layer_counts("cross") == {(8, 8): 2}
    torch.testing.assert_close(store.means("cross")[(8, 8)].double(), expected[..., 64:], atol=1e-6, rtol=1e-4)
    image_part = [d[..., :64] / d[..., :64].sum(-1, keepdim=True) for d in (direct[3], direct[9])]
    torch.testing.assert_close(store.means("self")[(8, 8)].double(), sum(image_part) / 2, atol=1e-6, rtol=1e-4)


def test_flow_noise_is_the_interpolation_at_the_schedulers_sigma(tiny_sd3):
    from dsseg.model.extract import AttentionExtractor

    config = ExtractConfig.from_params({"noise": "flow", "flow_step": -8, "num_inference_steps": 28, "seed": 3})
    extractor = AttentionExtractor(tiny_sd3, config)

    # SD3's schedule written out: σ linear from 1 to the training schedule's smallest (shifted) σ over
    # 28 steps, then shifted by 3: s ↦ 3s / (1 + 2s).
    def shift(s):
        return 3.0 * s / (1 + 2.0 * s)

    shifted = shift(np.linspace(1.0, shift(1.0 / 1000), 28))
    assert extractor.sigma == pytest.approx(shifted[20], rel=1e-5)  # released NOISE_STEPS 8: timesteps[-8]
    assert extractor.timestep == pytest.approx(1000 * shifted[20], rel=1e-5)
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    expected = (1 - shifted[20]) * latents + shifted[20] * noise
    torch.testing.assert_close(extractor.add_noise(latents), expected.float(), atol=1e-5, rtol=1e-5)


def test_seg4diff_merge_matches_the_released_steps_on_seeded_maps():
    from dsseg.methods.configs import Seg4DiffConfig
    from dsseg.methods.seg4diff import greedy_merge, token_proposals

    generator = torch.Generator().manual_seed(0)
    # Image→text maps of 154 tokens on a 12×12 grid: 5 planted token groups share a spatial pattern.
    patterns = torch.rand(5, 144, generator=generator) ** 4
    group = torch.randint(0, 5, (154,), generator=generator)
    maps = (patterns[group].T + 0.05 * torch.rand(144, 154, generator=generator)).softmax(-1)
    for threshold in (0.001, 0.01, 0.1):
        expected = seg4diff_unsupervised(maps, (12, 12), threshold)
        config = Seg4DiffConfig(kl_threshold=threshold)
        merged = greedy_merge(token_proposals(maps, config), threshold)
        assert merged.shape[0] == expected.shape[0] > 1
        torch.testing.assert_close(merged, expected.reshape(len(expected), -1), atol=1e-12, rtol=1e-9)
    capped = greedy_merge(token_proposals(maps, Seg4DiffConfig()), 0.001, max_masks=3)
    assert len(capped) == 3


def test_seg4diff_unsupervised_runs_as_released_on_tiny_sd3(tiny_sd3, bsds_image):
    from dsseg.methods.upsample import compact_labels
    from dsseg.segmenter import Segmenter

    segmenter = Segmenter(tiny_sd3, "seg4diff", {"image_size": 256, "kl_threshold": 0.001})
    extraction = segmenter.configs[0].extraction
    assert extraction.capture.layers == (9,) and extraction.prompting.prompt == ""
    assert extraction.preparation.geometry == "squash"
    batch = segmenter.batch([bsds_image])
    bundle, _ = segmenter.forward(batch, segmenter.groups[0])
    assert set(bundle.cross_attention) == {(16, 16)} and bundle.cross_attention[(16, 16)].shape == (1, 256, 154)
    ((result,),) = segmenter.segment(batch, frame="model")
    labels = result.result.labels
    # The released merge on the captured maps, upsampled bilinearly to the image's own size (squashed:
    # the whole photo), then the arg-max, as sem_seg_postprocess and the evaluation's argmax.
    expected = seg4diff_unsupervised(bundle.cross_attention[(16, 16)][0], (16, 16), 0.001)
    up = torch.nn.functional.interpolate(expected[None].float(), size=bsds_image.shape[:2], mode="bilinear")
    assert labels.shape == bsds_image.shape[:2] and len(labels.unique()) > 1
    assert torch.equal(labels, compact_labels(up[0].argmax(0)))


def test_seg4diff_open_vocabulary_reads_each_class_tokens_in_the_space_joined_prompt(tiny_sd3, bsds_image):
    from dsseg.segmenter import Segmenter

    segmenter = Segmenter(tiny_sd3, "seg4diff", {"image_size": 256, "classes": ["horse", "traffic light"]})
    plan = segmenter.groups[0].extractor.prompt_plans(("horse", "traffic light"))[0]
    assert plan.text == "horse traffic light"  # the released " ".join(classnames)
    assert [tokens.name for tokens in plan.classes] == [(1,), (2, 3)]  # after the start token, in order
    ((segmentation,),) = segmenter.segment(segmenter.batch([bsds_image]), frame="model")
    assert segmentation.result.names == ["horse", "traffic light"]


@pytest.mark.parametrize(
    "method, params",
    [
        ("diffseg", {"kl_threshold": 0.1}),
        ("ncut", {"noise": "none", "stopping": "threshold", "threshold": 0.99, "min_segment_size": 2}),
        ("openvocab", {"noise": "flow", "flow_step": -8, "num_inference_steps": 28, "classes": ["horse", "grass"]}),
        ("diffcut", {"noise": "flow", "flow_step": -8, "num_inference_steps": 28, "feature_layer": "layer:9"}),
        ("diffseg", {"kl_threshold": 0.1, "classes": ["horse", "grass"]}),
    ],
)
def test_every_method_segments_on_an_mmdit(tiny_sd3, bsds_image, method, params):
    from dsseg import segment_image

    result = segment_image(bsds_image, method, tiny_sd3, image_size=128, **params)
    assert result.labels.shape == bsds_image.shape[:2]
    assert result.num_segments >= 2
    if "classes" in params:
        assert set(result.names) >= {"horse", "grass"} or set(result.names) <= {"background", "horse", "grass"}


@pytest.mark.parametrize(
    "method, params, flag, says",
    [
        ("ncut", {}, "noise", "flow matching"),  # ncut's DDIM inversion reads a UNet's schedule
        ("diffcut", {"noise": "none"}, "feature_layer", "layer:9"),
        ("diffseg", {"blocks": ["up"]}, "blocks", "layers"),
        ("diffseg", {"resolutions": [64]}, "resolutions", "one token grid"),
    ],
)
def test_what_an_mmdit_cannot_run_is_refused_before_a_forward(method, params, flag, says):
    from dsseg.checks import check_family
    from dsseg.spec import MethodSpec

    with pytest.raises(ConfigError) as error:
        check_family([MethodSpec(method, params).resolved], "mmdit")
    assert error.value.param == flag and says in str(error.value)


@pytest.mark.parametrize(
    "method, params, flag",
    [
        ("seg4diff", {}, "method"),
        ("diffseg", {"noise": "flow", "flow_step": 3}, "noise"),
        ("diffseg", {"layers": [2]}, "layers"),
    ],
)
def test_what_a_unet_cannot_run_is_refused(method, params, flag):
    from dsseg.checks import check_family
    from dsseg.spec import MethodSpec

    with pytest.raises(ConfigError) as error:
        check_family([MethodSpec(method, params).resolved], "unet")
    assert error.value.param == flag


def test_a_segment_job_refuses_seg4diff_on_a_unet_at_planning(tmp_path):
    from helpers import IMAGES

    from dsseg.job.config import SegmentJob
    from dsseg.spec import MethodSpec

    job = SegmentJob(input=str(IMAGES), output=str(tmp_path), backbone="tiny", configs=[MethodSpec("seg4diff")])
    with pytest.raises(ConfigError, match="SD3 backbone"):
        job.check_paths()  # the family is read from the name or folder where the job runs
    typo = SegmentJob(
        input=str(IMAGES), output=str(tmp_path), backbone=str(tmp_path / "sd3"), configs=[MethodSpec("seg4diff")]
    )
    typo.check_paths()  # a missing folder is left to the weights check, which says how to get weights


def test_the_segment_job_takes_an_sd3_backbone(tmp_path):
    from helpers import IMAGES, decoded

    from dsseg.job.config import SegmentJob
    from dsseg.job.model_stage import SegmentWorker
    from dsseg.spec import MethodSpec

    job = SegmentJob(
        input=str(IMAGES), output=str(tmp_path), backbone="tiny-sd3", device="cpu",
        configs=[MethodSpec("seg4diff", {"image_size": 128, "kl_threshold": 0.001})],
    )  # fmt: skip
    rows = SegmentWorker(job)(decoded(job, {"135069.jpg"})).to_pylist()
    assert len(rows) == 1 and rows[0]["status"] == "ok" and np.frombuffer(rows[0]["labels"], np.int32).size > 0


def test_families_are_known_from_names_and_folders(tmp_path):
    from dsseg.model.families import backbone_family

    assert backbone_family("tiny-sd3") == "mmdit" and backbone_family("tiny") == "unet"
    assert backbone_family("stabilityai/stable-diffusion-3-medium-diffusers") == "mmdit"
    assert backbone_family("stabilityai/stable-diffusion-3.5-large") == "mmdit"
    assert backbone_family("CompVis/stable-diffusion-v1-4") == "unet"
    (tmp_path / "transformer").mkdir()
    assert backbone_family(str(tmp_path)) == "mmdit"


def test_missing_sd3_weights_say_which_folders_are_needed(tmp_path):
    from dsseg.model.backbone import BackboneNotFoundError, load_backbone

    (tmp_path / "transformer").mkdir()
    with pytest.raises(BackboneNotFoundError, match=r"transformer/config\.json") as error:
        load_backbone(str(tmp_path), device="cpu")
    assert "tiny-sd3" in str(error.value)


def test_flow_settings_are_validated():
    with pytest.raises(ConfigError, match="flow_step"):
        ExtractConfig.from_params({"noise": "flow"})
    with pytest.raises(ConfigError, match="flow_step"):
        ExtractConfig.from_params({"noise": "flow", "flow_step": 28, "num_inference_steps": 28})
    with pytest.raises(ConfigError, match="flow_step"):
        ExtractConfig.from_params({"noise": "noise", "flow_step": 3})
    with pytest.raises(ConfigError, match="layers"):
        Capture(layers=(-1,))


@pytest.mark.slow
def test_sd3_random_has_sd3_mediums_layout_and_runs_seg4diff(bsds_image):
    """The full-size random SD3 (about 45 s to build and 12 GB of host memory on 2 cores)."""
    from dsseg import segment_image
    from dsseg.model.backbone import load_backbone

    backbone = load_backbone("sd3-random", device="cpu")
    config = backbone.transformer.config
    assert (config.num_layers, config.num_attention_heads, config.attention_head_dim) == (24, 24, 64)
    assert (config.joint_attention_dim, config.pooled_projection_dim, backbone.vae.config.latent_channels) == (
        4096,
        2048,
        16,
    )
    assert backbone.encode_prompt("").shape == (1, 155, 4096)
    result = segment_image(bsds_image, "seg4diff", backbone, image_size=256)
    assert result.labels.shape == bsds_image.shape[:2] and result.num_segments >= 1


def test_seg4diffs_segments_can_be_named_by_clip(tiny_sd3, bsds_image):
    from dsseg import segment_image

    params = {"image_size": 128, "kl_threshold": 0.001, "naming": "clip", "clip_model": "tiny-clip"}
    result = segment_image(bsds_image, "seg4diff", tiny_sd3, classes=["horse", "grass"], **params)
    assert result.num_segments >= 2 and set(result.names) <= {"background", "horse", "grass"}


def test_an_sd3_folder_in_diffusers_layout_loads_through_from_pretrained(tiny_sd3, tmp_path):
    """tiny-sd3 saved part by part as a diffusers SD3 pipeline folder (no T5) loads back through the
    real loading code, recognised as MM-DiT by its folder, with equal outputs."""
    from dsseg.model.backbone import load_backbone

    for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        getattr(tiny_sd3, part).save_pretrained(tmp_path / part)
    loaded = load_backbone(str(tmp_path), device="cpu", offline=True)
    assert loaded.family == "mmdit" and loaded.text_encoder_3 is None
    torch.testing.assert_close(loaded.encode_prompt("a horse"), tiny_sd3.encode_prompt("a horse"))
    latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    condition = tiny_sd3.encode_prompt("")
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.denoise(latents, 500.0, condition), tiny_sd3.denoise(latents, 500.0, condition)
        )


def test_segment_image_takes_a_backbone_by_path(bsds_image):
    from pathlib import Path

    from dsseg import segment_image

    result = segment_image(bsds_image, "seg4diff", Path("tiny-sd3"), image_size=128, kl_threshold=0.001)
    assert result.num_segments >= 2
