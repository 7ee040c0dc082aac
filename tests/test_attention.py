import pytest
import torch
from oracles.attention import direct_self_attention, self_attention_inputs

from dsseg.model.attention import attention_layers, capture_attention, level_grids
from dsseg.model.config import Capture


def _latents(tiny, batch=1, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, size, size, generator=generator)


def _run(unet, latents, context):
    return unet(latents, torch.tensor(300), encoder_hidden_states=context.expand(len(latents), -1, -1)).sample


def test_captured_probabilities_equal_direct_softmax(tiny):
    """Per level: mean over layers of mean over heads of softmax(QKᵀ/√d), from the layers' inputs."""
    unet, context, latents = tiny.unet, tiny.encode_prompt(""), _latents(tiny, batch=2)
    with (
        self_attention_inputs(unet) as inputs,
        torch.no_grad(),
        capture_attention(unet, Capture(), (64, 64)) as store,
    ):
        _run(unet, latents, context)
    expected = direct_self_attention(unet, inputs)
    captured = store.means("self")
    assert {g: store.layer_counts("self")[g] for g in captured} == {(64, 64): 5, (32, 32): 5, (16, 16): 5, (8, 8): 1}
    for (h, w), maps in captured.items():
        reference = expected[h * w]
        assert maps.shape == (2, h * w, h * w) and maps.dtype == torch.float32
        torch.testing.assert_close(maps, reference, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(maps.sum(-1), torch.ones(2, h * w), atol=1e-5, rtol=0)


def test_capture_leaves_the_unet_output_unchanged_and_restores_processors(tiny):
    unet, context, latents = tiny.unet, tiny.encode_prompt(""), _latents(tiny, seed=1)
    before = dict(unet.attn_processors)
    with torch.no_grad():
        plain = _run(unet, latents, context)
        with capture_attention(unet, Capture(cross_attention=True), (64, 64)) as store:
            captured = _run(unet, latents, context)
    torch.testing.assert_close(captured, plain, atol=1e-5, rtol=1e-4)
    assert store.means("cross")  # cross-attention was captured too
    after = unet.attn_processors
    assert all(after[name] is processor for name, processor in before.items())


def test_processors_restored_after_an_exception(tiny):
    before = dict(tiny.unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(tiny.unet, Capture(), (64, 64)):
            raise RuntimeError("boom")
    assert all(tiny.unet.attn_processors[name] is p for name, p in before.items())


def test_batches_capture_each_image_independently(tiny):
    unet, context = tiny.unet, tiny.encode_prompt("")
    a, b = _latents(tiny, seed=2), _latents(tiny, seed=3)
    with torch.no_grad():
        with capture_attention(unet, Capture(), (64, 64)) as together:
            _run(unet, torch.cat([a, b]), context)
        with capture_attention(unet, Capture(), (64, 64)) as alone:
            _run(unet, b, context)
    for grid, maps in alone.means("self").items():
        torch.testing.assert_close(together.means("self")[grid][1:], maps, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(together.means("self")[grid][0], maps[0], atol=1e-4)


def test_cross_attention_and_selection(tiny):
    spec = Capture(self_attention=True, cross_attention=True, blocks=("up",), capture_resolutions=(64, 16))
    with torch.no_grad(), capture_attention(tiny.unet, spec, (64, 64)) as store:
        _run(tiny.unet, _latents(tiny), tiny.encode_prompt("a photograph of a horse"))
    assert list(store.means("self")) == [(64, 64), (16, 16)]  # the resolution filter is for self-attention
    cross = store.means("cross")
    assert list(cross) == [(64, 64), (32, 32), (16, 16)]  # cross-attention at every level of the up blocks
    assert store.layer_counts("cross") == {(64, 64): 3, (32, 32): 3, (16, 16): 3}
    assert cross[(64, 64)].shape == (1, 4096, 77)
    torch.testing.assert_close(cross[(16, 16)].sum(-1), torch.ones(1, 256))


def test_non_square_and_larger_latents_map_to_level_grids(tiny):
    assert level_grids((96, 96)) == [(96, 96), (48, 48), (24, 24), (12, 12)]
    assert level_grids((64, 40)) == [(64, 40), (32, 20), (16, 10), (8, 5)]
    with pytest.raises(ValueError, match="multiple of 64"):
        level_grids((60, 64))
    with torch.no_grad(), capture_attention(tiny.unet, Capture(capture_resolutions=(8,)), (64, 40)) as store:
        _run(tiny.unet, torch.randn(1, 4, 64, 40), tiny.encode_prompt(""))
    assert list(store.means("self")) == [(8, 5)]


def test_layer_names_and_kinds(tiny):
    layers = attention_layers(tiny.unet)
    assert {layer.kind for layer in layers} == {"self", "cross"}
    assert all(layer.name.endswith(".processor") for layer in layers)
    with pytest.raises(ValueError, match="blocks"):
        Capture(blocks=("left",))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_get_float32_logits(dtype):
    """Large fp16 logits overflow (SD 2.x's reason for upcast_attention); capture stays exact."""
    from dsseg.model.attention import attend_and_average

    generator = torch.Generator().manual_seed(0)
    query = (torch.randn(1, 2, 16, 8, generator=generator) * 120).to(dtype)
    key = (torch.randn(1, 2, 16, 8, generator=generator) * 120).to(dtype)
    value = torch.randn(1, 2, 16, 8, generator=generator).to(dtype)
    scale = 8**-0.5
    if dtype == torch.float16:  # the hazard is real: fp16 logits overflow to inf
        assert not torch.isfinite(torch.matmul(query, key.transpose(-1, -2))).all()
    output, probs = attend_and_average(query, key, value, scale)
    exact = torch.softmax(query.double() @ key.double().transpose(-1, -2) * scale, dim=-1)
    assert output.dtype == dtype and probs.dtype == torch.float32
    torch.testing.assert_close(probs.double(), exact.mean(1), atol=1e-5, rtol=1e-4)


def test_bfloat16_backbone_captures_valid_maps():
    from dsseg.model.backbone import load_backbone

    backbone = load_backbone("tiny", device="cpu", dtype="bfloat16")
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.no_grad(), capture_attention(backbone.unet, Capture(), (32, 32)) as store:
        out = _run(backbone.unet, latents, backbone.encode_prompt(""))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    for grid, maps in store.means("self").items():
        assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
        torch.testing.assert_close(maps.sum(-1), torch.ones(1, grid[0] * grid[1]), atol=1e-5, rtol=0)
