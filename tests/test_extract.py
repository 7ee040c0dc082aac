import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from dsseg.errors import ConfigError
from dsseg.io.images import prepare_image
from dsseg.model.backbone import SD_V1_SCHEDULER
from dsseg.model.config import ExtractConfig
from dsseg.model.extract import AttentionExtractor, ddim_invert, inversion_timesteps, to_model_input


def _batch(tiny, *images, size: int = 512):
    pixels = np.stack([prepare_image(image, size, "center_crop")[0] for image in images])
    return to_model_input(pixels, tiny.device, tiny.dtype)


def test_inversion_timesteps_are_the_first_n_of_n_ddim_steps():
    scheduler = DDIMScheduler(**SD_V1_SCHEDULER)
    assert inversion_timesteps(scheduler, 50, 10) == list(range(1, 182, 20))


def test_ddim_inversion_is_exact_for_a_constant_noise_predictor():
    """With ε fixed, every DDIM step stays on x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε."""
    scheduler = DDIMScheduler(**SD_V1_SCHEDULER)
    alphas = scheduler.alphas_cumprod.double()
    x0 = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    eps = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    calls = []

    def predict(x, t):
        calls.append(t)
        return eps

    steps = inversion_timesteps(scheduler, 50, 10)
    inverted = ddim_invert(x0, predict, alphas, steps, start_alpha=1.0)
    t = steps[-1]
    expected = math.sqrt(alphas[t]) * x0 + math.sqrt(1 - alphas[t]) * eps
    torch.testing.assert_close(inverted, expected)
    assert calls == steps


def test_noise_modes(tiny, bsds_image):
    images = _batch(tiny, bsds_image, size=128)  # plumbing: a 16² latent is enough
    clean = AttentionExtractor(tiny, ExtractConfig())(images)
    assert clean.timestep == 300 and len(clean) == 1
    noisy = AttentionExtractor(tiny, ExtractConfig.from_params(dict(noise="noise", timestep=100, seed=1)))(images)
    noisy_again = AttentionExtractor(tiny, ExtractConfig.from_params(dict(noise="noise", timestep=100, seed=1)))(images)
    other_seed = AttentionExtractor(tiny, ExtractConfig.from_params(dict(noise="noise", timestep=100, seed=2)))(images)
    inverted = AttentionExtractor(
        tiny, ExtractConfig.from_params(dict(noise="ddim_inversion", inversion_steps=3, num_inference_steps=50))
    )(images)
    assert noisy.timestep == 100 and inverted.timestep == 41
    grid = (16, 16)
    torch.testing.assert_close(noisy.self_attention[grid], noisy_again.self_attention[grid])
    for other in (other_seed, clean, inverted):
        assert not torch.allclose(noisy.self_attention[grid], other.self_attention[grid], atol=1e-4)


@pytest.mark.parametrize("noise", ["none", "noise"])
def test_attention_over_several_timesteps_is_the_mean_of_single_timestep_captures(tiny, bsds_image, noise):
    flipped = np.ascontiguousarray(bsds_image[:, ::-1])
    images = _batch(tiny, bsds_image, flipped, size=128)
    steps = (1, 50, 150)
    base = dict(noise=noise, seed=3)
    averaged = AttentionExtractor(tiny, ExtractConfig.from_params(dict(base, timesteps=steps, cross_attention=True)))(
        images
    )
    singles = [
        AttentionExtractor(tiny, ExtractConfig.from_params(dict(base, timestep=t, cross_attention=True)))(images)
        for t in steps
    ]
    assert averaged.timesteps == steps and averaged.timestep == 1 and len(averaged) == 2
    for kind in ("self_attention", "cross_attention"):
        for grid, maps in getattr(averaged, kind).items():
            mean = torch.stack([getattr(single, kind)[grid] for single in singles]).mean(0)
            torch.testing.assert_close(maps, mean, atol=2e-5, rtol=1e-4)
            assert not torch.allclose(maps, getattr(singles[0], kind)[grid], atol=1e-4)  # the steps differ
    # Open vocabulary: each class's map and the self-attention are averaged over the steps too.
    classes = dict(base, classes=("horse", "sky"), class_template="a photograph of a {class}.")
    averaged = AttentionExtractor(tiny, ExtractConfig.from_params(dict(classes, timesteps=steps)))(images)
    singles = [AttentionExtractor(tiny, ExtractConfig.from_params(dict(classes, timestep=t)))(images) for t in steps]
    for index in range(2):
        for grid, maps in averaged.class_attention[index].items():
            mean = torch.stack([single.class_attention[index][grid] for single in singles]).mean(0)
            torch.testing.assert_close(maps, mean, atol=2e-5, rtol=1e-4)
    for grid, maps in averaged.self_attention.items():
        mean = torch.stack([single.self_attention[grid] for single in singles]).mean(0)
        torch.testing.assert_close(maps, mean, atol=2e-5, rtol=1e-4)


def test_timesteps_are_checked():
    for bad in ({"timesteps": [50, 50]}, {"timesteps": [1000]}, {"timesteps": []}, {"timesteps": "1,50"}):
        with pytest.raises(ConfigError, match="^timesteps: "):
            ExtractConfig.from_params(bad)
    with pytest.raises(ConfigError, match="replaces timestep"):
        ExtractConfig.from_params({"timesteps": [1, 50], "timestep": 100})
    with pytest.raises(ConfigError, match="ddim_inversion"):
        ExtractConfig.from_params({"timesteps": [1, 50], "noise": "ddim_inversion"})
    assert "timesteps" not in ExtractConfig().flat()  # unset, it leaves config ids as they were
    # Over a method whose defaults set timestep (openvocab: 100), timesteps replaces it, and back.
    from dsseg.spec import MethodSpec

    steps = MethodSpec("openvocab", {"classes": ["horse"], "timesteps": [1, 50, 100, 150]}).resolved.extraction.noising
    assert steps.timesteps == (1, 50, 100, 150) and steps.timestep is None
    base = ExtractConfig.from_params({"timesteps": [1, 50]})
    assert ExtractConfig.from_params({"timestep": 7}, base).noising.timesteps is None
    assert ExtractConfig.from_params({"timesteps": [1, 50]}).flat()["timesteps"] == (1, 50)


def test_seeded_noise_matches_the_scheduler_forward_process(tiny):
    extractor = AttentionExtractor(tiny, ExtractConfig.from_params(dict(noise="noise", timestep=100, seed=5)))
    latents = torch.randn(2, 4, 64, 64)
    noise = torch.randn((1, 4, 64, 64), generator=torch.Generator().manual_seed(5))
    expected = tiny.scheduler.add_noise(latents, noise.expand_as(latents), torch.tensor([100]))
    torch.testing.assert_close(extractor.add_noise(latents), expected, atol=1e-5, rtol=1e-5)


def test_batched_extraction_equals_one_by_one(tiny, bsds_image):
    flipped = np.ascontiguousarray(bsds_image[:, ::-1])
    extractor = AttentionExtractor(tiny, ExtractConfig.from_params(dict(capture_resolutions=(32, 8))))
    together = extractor(_batch(tiny, bsds_image, flipped))
    alone = extractor(_batch(tiny, flipped))
    assert list(together.self_attention) == [(32, 32), (8, 8)]
    for grid in together.self_attention:
        torch.testing.assert_close(together.self_attention[grid][1:], alone.self_attention[grid], atol=1e-4, rtol=1e-3)
    assert together.image(1).self_attention[(8, 8)].shape == (1, 64, 64)


def test_sd2_sized_input_gives_96_latent_levels(tiny, bsds_image):
    pixels, _ = prepare_image(bsds_image, 768, "center_crop")
    bundle = AttentionExtractor(tiny, ExtractConfig.from_params(dict(image_size=768, capture_resolutions=(24, 12))))(
        to_model_input(pixels[None], tiny.device, tiny.dtype)
    )
    assert bundle.latent_hw == (96, 96)
    assert {g: a.shape for g, a in bundle.self_attention.items()} == {(24, 24): (1, 576, 576), (12, 12): (1, 144, 144)}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=500), "multiple of 64"),
        (dict(noise="ddim_inversion", timestep=100), "set by inversion_steps"),
        (dict(noise="gaussian"), "noise: must be one of"),
        (dict(timestep=1000), r"\[0, 1000\)"),
        (dict(inversion_steps=60), "inversion_steps"),
        (dict(blocks=("side",)), "blocks"),
        (dict(geometry="pad"), "geometry: must be one of"),
    ],
)
def test_extract_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExtractConfig.from_params(kwargs)
