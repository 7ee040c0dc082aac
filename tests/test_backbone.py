import pytest
import torch

from dsseg.model.attention import attention_layers
from dsseg.model.backbone import BackboneNotFoundError, load_backbone, resolve_dtype
from dsseg.model.tokenizer import clip_tokenizer


def test_tokenizer_is_the_real_clip_vocabulary():
    tokenizer = clip_tokenizer()
    assert len(tokenizer) == 49408
    # Known ids of OpenAI's CLIP tokenizer: <start> a photo of a cat <end>.
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = tokenizer("", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert padded.shape == (1, 77) and padded[0, 0] == 49406 and (padded[0, 1:] == 49407).all()


def test_tiny_backbone_has_sd_v1_layout(tiny):
    layers = attention_layers(tiny.unet)
    self_layers = [layer for layer in layers if layer.kind == "self"]
    assert len(self_layers) == 16 and len(layers) == 32
    assert [layer.block for layer in self_layers].count("mid") == 1
    assert type(tiny.unet).__name__ == "UNet2DConditionModel"
    assert type(tiny.vae).__name__ == "AutoencoderKL"
    assert type(tiny.text_encoder).__name__ == "CLIPTextModel"
    assert type(tiny.scheduler).__name__ == "DDIMScheduler"
    assert tiny.vae_scale_factor == 8 and tiny.latent_scaling == pytest.approx(0.18215)


def test_tiny_backbone_is_seeded():
    a = load_backbone("tiny", seed=3)
    b = load_backbone("tiny", seed=3)
    c = load_backbone("tiny", seed=4)
    weight = "conv_in.weight"
    assert torch.equal(a.unet.state_dict()[weight], b.unet.state_dict()[weight])
    assert not torch.equal(a.unet.state_dict()[weight], c.unet.state_dict()[weight])


def test_missing_weights_give_one_clear_error(tmp_path):
    with pytest.raises(BackboneNotFoundError) as info:
        load_backbone(str(tmp_path / "no-such-model"), offline=True)
    message = str(info.value)
    assert "huggingface-cli download" in message and "--backbone tiny" in message


def test_uncached_hub_id_offline_is_a_clear_error():
    with pytest.raises(BackboneNotFoundError, match="dsseg-tests/no-such-model"):
        load_backbone("dsseg-tests/no-such-model", offline=True)


def test_dtype_choice():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="^dtype: must be one of"):
        resolve_dtype("float8", torch.device("cpu"))


@pytest.mark.slow
def test_compiled_backbone_gives_the_eager_attention(bsds_image):
    """--compile (minutes on 2 cores: inductor compiles each block): same attention, same labels."""
    from dsseg.model.backbone import compile_backbone, load_backbone
    from dsseg.segmenter import Segmenter

    eager, compiled = load_backbone("tiny", device="cpu"), load_backbone("tiny", device="cpu")
    assert compile_backbone(compiled) > 10
    segmenters = [Segmenter(b, "diffseg", {"image_size": 128}) for b in (eager, compiled)]
    batch = segmenters[0].batch([bsds_image])
    results = [s.segment(batch)[0][0] for s in segmenters]
    assert (results[0].labels == results[1].labels).mean() > 0.99


def test_an_unreachable_hub_fails_in_seconds_with_the_message(monkeypatch):
    import time

    from huggingface_hub import HfApi

    from dsseg.model.backbone import BackboneNotFoundError, check_backbone_available

    def unreachable(self, name, timeout=None):
        assert timeout is not None and timeout <= 10  # one short request, no retries
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(HfApi, "model_info", unreachable)
    start = time.perf_counter()
    with pytest.raises(BackboneNotFoundError, match="(?s)hub cannot be reached .*ConnectionError.*--backbone tiny"):
        check_backbone_available("someone/not-cached-model")
    assert time.perf_counter() - start < 5
    with pytest.raises(BackboneNotFoundError, match="offline is set"):
        check_backbone_available("someone/not-cached-model", offline=True)


def test_cuda_asked_for_on_a_machine_without_it_says_what_to_do(monkeypatch):
    from dsseg.errors import ConfigError
    from dsseg.model.backbone import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="^device: CUDA is not available.*use --device cpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
