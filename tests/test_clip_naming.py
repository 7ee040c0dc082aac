"""naming="clip": segments named by a CLIP among the candidate classes, as DiffCut's released
open-vocabulary evaluation does (``dsseg.methods.clip_naming``, ``dsseg.model.clip``)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from oracles.clip_reference import (
    reference_associate_label,
    reference_clip_image,
    reference_mask_pooling,
    reference_text_classifier,
)

from dsseg.errors import ConfigError
from dsseg.methods.base import MethodResult
from dsseg.methods.clip_naming import (
    VILD_TEMPLATES,
    candidate_names,
    clip_input,
    mask_pool,
    name_image,
    text_classifier,
)
from dsseg.model.clip import ClipNotFoundError, build_random_clip, check_clip_available, load_clip
from dsseg.segmenter import Segmenter
from dsseg.spec import DEFAULT_CLIP_MODEL, MethodSpec

GOLDEN = Path(__file__).parent / "data" / "golden" / "clip" / "tiny_clip.npz"
SMALL = {"image_size": 128}
CLASSES = ["horse", "grass", "sky"]


@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip("tiny-clip", device="cpu")


def fresh_clip():
    return load_clip("tiny-clip", device="cpu")


def test_tiny_clip_is_open_clips_network():
    """tiny-clip's weights, loaded into open_clip's own CLIP (timm ConvNeXt trunk, TimmModel MLP head,
    text Transformer) by ``tests/data/golden/clip/make_golden.py``, gave these outputs: dsseg's
    network gives them too (dense features, pooled embeddings, text features, token ids)."""
    golden = np.load(GOLDEN)
    clip = fresh_clip()
    with torch.no_grad():
        dense = clip.model.dense_features(torch.from_numpy(golden["image"]))
        embedded = clip.model.embed_pooled(torch.from_numpy(golden["pooled"]))
        ids = clip.token_ids([str(t) for t in golden["texts"]])
        text = clip.model.encode_text(ids)
    np.testing.assert_allclose(dense.numpy(), golden["dense"], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(embedded.numpy(), golden["embedded"], atol=1e-6, rtol=1e-4)
    np.testing.assert_array_equal(ids.numpy(), golden["ids"])
    np.testing.assert_allclose(text.numpy(), golden["text"], atol=1e-5, rtol=1e-4)


def constant_head(clip, target: torch.Tensor) -> None:
    """Make CLIP's projection MLP map every pooled feature to ``target`` (D,): fc1 ≡ its bias (1s),
    so its GELU is a constant g; fc2 = target·gᵀ/|g|²."""
    mlp = clip.model.visual.head.mlp
    with torch.no_grad():
        mlp.fc1.weight.zero_()
        mlp.fc1.bias.fill_(1.0)
        g = mlp.act(mlp.fc1.bias)
        mlp.fc2.weight.copy_(target[:, None] * g[None, :] / g.dot(g))


def clip_settings(**params):
    """The ``ClipNaming`` of a diffseg config named by tiny-clip."""
    spec = MethodSpec("diffseg", {**SMALL, "naming": "clip", "classes": CLASSES, "clip_model": "tiny-clip", **params})
    return spec.resolved.clip


def test_the_class_whose_text_embedding_is_the_image_embedding_wins():
    """Through the real forward (trunk, mask pooling, head, templates, max over synonyms), with the
    head made to output one class's text embedding for every segment: every segment takes that
    class, for each class in turn, background included; a synonym counts for its class."""
    clip = fresh_clip()
    names = candidate_names(["horse", "grass", "tv monitor, monitor, tv"], background=True)
    assert names == ["background", "horse", "grass", "tv monitor, monitor, tv"]
    classifier, counts = text_classifier(clip, names)
    assert counts == [1, 1, 1, 3] and classifier.shape == (6, 16)
    labels = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 1], [2, 2, 2, 1]]).repeat_interleave(16, 0).repeat_interleave(16, 1)
    image = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for row, expected in enumerate(["background", "horse", "grass", "tv monitor, monitor, tv", names[3], names[3]]):
        constant_head(clip, classifier[row])
        named = name_image(MethodResult(labels), image, names, clip, clip_settings())
        assert named.names == [expected] * 3, row
        assert all(score > 1 / len(names) for score in named.scores)


def test_each_segment_takes_the_class_its_embedding_matches(tiny_clip, monkeypatch):
    """Segment k's embedding set to class π(k)'s text embedding (plus noise): segment k is named π(k)."""
    names = ["background", *CLASSES]
    classifier, _ = text_classifier(tiny_clip, names)
    order = [2, 0, 3, 1, 2]
    noise = torch.randn(len(order), classifier.shape[1], generator=torch.Generator().manual_seed(1)) * 0.01
    monkeypatch.setattr(tiny_clip.model, "embed_pooled", lambda pooled: classifier[order] + noise)
    labels = torch.arange(5).repeat_interleave(13)[None].repeat(32, 1)  # (32, 65), five vertical bands
    named = name_image(MethodResult(labels), torch.zeros(1, 3, 32, 65), names, tiny_clip, clip_settings())
    assert named.names == [names[k] for k in order]


def test_mask_pooling_is_the_released_mask_pooling():
    """Features pooled under each segment's mask, nearest-exact to the grid, against the released
    ``MaskPooling`` (float64): a label map of a size no multiple of the grid, segments the grid
    never samples (pooled to zeros) included."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 6, 5, 7, generator=generator, dtype=torch.float64)
    for shape in [(37, 50), (5, 7), (160, 224), (9, 13)]:
        labels = torch.randint(0, 4, shape, generator=generator)
        labels[0, 0] = 4  # a one-pixel segment: sampled by no grid cell unless the sizes agree
        ours = mask_pool(features[0], labels, 5)
        masks = torch.stack([(labels == s).double() for s in range(5)])[None]
        expected = reference_mask_pooling(features, masks)[0]
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    assert mask_pool(features[0], labels, 6)[5].abs().max() == 0  # an absent id pools to zeros too


def test_clip_reads_the_image_as_released():
    """[-1, 1] model inputs → the released CLIP input: [0, 1], no normalisation; with
    clip_image_size, resized bilinearly (COCO-Object's 2048² read at a small scale)."""
    image01 = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    model_input = image01 * 2 - 1
    torch.testing.assert_close(clip_input(model_input), reference_clip_image(image01).float())
    torch.testing.assert_close(clip_input(model_input, 32), reference_clip_image(image01, 32).float())
    assert clip_input(torch.zeros(1, 3, 16, 24), 48).shape[-2:] == (32, 48)  # longer side to the size


def test_naming_is_the_released_associate_label(tiny_clip):
    """The whole naming of one image against the released ``associate_label`` and text classifier
    run in float64 on the same tiny-clip: the same probabilities per segment, the same class map."""
    names = ["background", "horse", "grass, lawn", "sky"]
    double = copy.deepcopy(tiny_clip.model).double()
    encode = lambda texts: double.encode_text(tiny_clip.token_ids(texts))  # noqa: E731
    with torch.no_grad():
        ours, counts = text_classifier(tiny_clip, names)
        expected, num_templates = reference_text_classifier(encode, names)
        assert counts == num_templates
        torch.testing.assert_close(ours.double(), expected, rtol=0, atol=1e-6)
        generator = torch.Generator().manual_seed(3)
        image01 = torch.rand(1, 3, 96, 96, generator=generator)
        image01[:, 0, :48] += 0.5  # regions the random features tell apart
        image01[:, 2, :, 60:] -= 0.5
        image01 = image01.clamp(0, 1)
        labels = torch.zeros(96, 96, dtype=torch.long)
        labels[:48] = 1
        labels[:, 60:] = 2
        labels[70:, 10:30] = 3
        labels[5, 5] = 4  # never sampled by the 3 × 3 grid
        for size in (None, 160):
            naming = clip_settings(clip_image_size=size)
            named = name_image(MethodResult(labels), image01 * 2 - 1, names, tiny_clip, naming)
            final, probabilities = reference_associate_label(
                image01.double(),
                labels[None, None].double(),
                double.dense_features,
                lambda x: double.embed_pooled(x.reshape(-1, x.shape[-1])).reshape(1, 1, -1),
                expected,
                double.logit_scale,
                num_templates,
                size,
            )
            for segment, probability in probabilities.items():
                assert abs(named.scores[segment] - float(probability.max())) < 1e-5
                if probability.topk(2).values.diff().abs() > 1e-4:  # not a near tie
                    assert named.names[segment] == names[int(probability.argmax())]
            ours_map = torch.tensor([names.index(named.names[s]) for s in range(5)])[labels]
            decided = torch.tensor([float(p.topk(2).values.diff().abs()) > 1e-4 for p in probabilities.values()])
            assert decided.sum() >= 3
            assert torch.equal(ours_map[decided[labels]], final[0, 0].long()[decided[labels]])


def test_segment_with_clip_names_from_the_candidates_and_prompts_no_class(tiny, bsds_image):
    """End to end: diffseg and diffcut named by tiny-clip among each image's candidates (the
    config's, or the image's own list); the UNet runs the plain forward: a clip-named config shares
    one forward with the unnamed one, its extraction is the unnamed one's, and its labels are equal."""
    plain = MethodSpec("diffseg", SMALL)
    named = MethodSpec("diffseg", {**SMALL, "naming": "clip", "classes": CLASSES, "clip_model": "tiny-clip"})
    assert named.resolved.extraction == plain.resolved.extraction
    assert not named.resolved.extraction.prompting.uses_classes
    segmenter = Segmenter(tiny, [plain, named])
    assert len(segmenter.groups) == 1
    batch = segmenter.batch([bsds_image, bsds_image[:, ::-1].copy()], classes=[None, ["cat", "dog"]])
    unnamed, by_clip = segmenter.segment(batch)
    for image, (a, b) in enumerate(zip(unnamed, by_clip)):
        np.testing.assert_array_equal(a.labels, b.labels)
        allowed = {"background", *(CLASSES if image == 0 else ["cat", "dog"])}
        assert b.names and set(b.names) <= allowed and all(0 < s <= 1 for s in b.scores)
        assert a.names is None
    cut = MethodSpec("diffcut", {"image_size": 128, "naming": "clip", "vocabulary": "voc20", "clip_model": "tiny-clip"})
    (segmentation,) = Segmenter(tiny, cut).segment(Segmenter(tiny, cut).batch([bsds_image]))[0]
    assert set(segmentation.names) <= {"background", *cut.resolved.clip.classes}


def test_naming_clip_refuses_without_candidates_and_out_of_place():
    from dsseg.api import segment_image

    with pytest.raises(ConfigError, match="^classes: the image has no candidate classes.*naming='clip'") as error:
        segment_image(
            np.zeros((64, 64, 3), np.uint8), method="diffseg", naming="clip", clip_model="tiny-clip", backbone="tiny"
        )
    assert error.value.param == "classes"
    with pytest.raises(ConfigError, match="^clip_model: is a parameter of naming='clip'"):
        MethodSpec("diffseg", {"clip_model": "tiny-clip"})
    with pytest.raises(ConfigError, match="^naming: 'clip' names the segments of diffseg, ncut, diffcut and seg4diff"):
        MethodSpec("openvocab", {"naming": "clip", "classes": CLASSES})
    with pytest.raises(ConfigError, match="^class_template: belongs to class prompts"):
        MethodSpec("diffseg", {"naming": "clip", "classes": CLASSES, "class_template": "a {class}"})
    with pytest.raises(ConfigError, match="^vocabulary: unknown vocabulary"):
        MethodSpec("diffcut", {"naming": "clip", "vocabulary": "voc21"})
    with pytest.raises(ConfigError, match="^clip_image_size: must be a whole number"):
        MethodSpec("diffseg", {"naming": "clip", "classes": CLASSES, "clip_image_size": 16})
    with pytest.raises(ConfigError, match="^classes: must be a list of names"):
        MethodSpec("diffseg", {"naming": "clip", "classes": "horse"})
    with pytest.raises(
        ConfigError, match="^naming: diffcut reads features.*naming='clip'"
    ):  # the other namings read attention
        MethodSpec("diffcut", {"naming": "majority"})


def test_batch_images_without_candidates_are_refused_before_the_forward(tiny, bsds_image, monkeypatch):
    spec = MethodSpec("diffseg", {**SMALL, "naming": "clip", "clip_model": "tiny-clip"})
    segmenter = Segmenter(tiny, spec)
    monkeypatch.setattr(segmenter, "forward", lambda *a, **k: pytest.fail("the UNet ran"))
    with pytest.raises(ConfigError, match="^classes: image 1 of the batch has no candidate classes") as error:
        segmenter.segment(segmenter.batch([bsds_image, bsds_image], classes=[["horse"], []]))
    assert error.value.param == "classes"


def test_missing_clip_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipNotFoundError, match="huggingface-cli download laion/CLIP-convnext_large_d_320") as error:
        load_clip(str(tmp_path / "nowhere"), device="cpu")
    assert "open_clip_model.safetensors" in str(error.value) and "clip_model=tiny-clip" in str(error.value)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ClipNotFoundError, match="not in the Hugging Face cache and offline is set"):
        check_clip_available(DEFAULT_CLIP_MODEL, offline=True)
    folder = tmp_path / "wrong"
    folder.mkdir()
    torch.save(build_random_clip().state_dict(), folder / "open_clip_pytorch_model.bin")  # tiny weights, large config
    with pytest.raises(ClipNotFoundError, match="are not an open_clip ConvNeXt CLIP"):
        load_clip(str(folder), device="cpu")
    (folder / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 512, "vision_cfg": {"width": 768}}}')
    with pytest.raises(ClipNotFoundError, match="ConvNeXt CLIP"):
        load_clip(str(folder), device="cpu")


def test_config_ids_keep_and_name_the_clip_settings():
    from dsseg.job.config import config_id

    base = MethodSpec("diffseg", {"naming": "clip", "classes": CLASSES})
    ids = {
        config_id("tiny", "float32", spec)
        for spec in (
            base,
            base.with_params(clip_model="tiny-clip"),
            base.with_params(clip_image_size=2048),
            base.with_params(clip_background=False),
            base.with_params(classes=["horse"]),
            MethodSpec("diffseg"),
        )
    }
    assert len(ids) == 6
    assert base.resolved.clip.clip_model == DEFAULT_CLIP_MODEL
    assert "clip" not in MethodSpec("diffseg").resolved.flat_extraction()  # ids of other configs unchanged
    assert len(VILD_TEMPLATES) == 14


def test_an_open_clip_folder_loads_strictly(tmp_path, monkeypatch):
    """A folder as open_clip's hub repositories lay it out (open_clip_config.json and
    open_clip_model.safetensors) loads into the same network: equal outputs."""
    from safetensors.torch import save_file

    from dsseg.model import clip_network

    monkeypatch.setitem(clip_network.CONVNEXT_TRUNKS, "convnext_test", ((1, 1, 1, 1), (8, 16, 24, 32)))
    model = build_random_clip("tiny-clip", seed=5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    config = {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "convnext_test", "timm_pool": "", "timm_proj": "mlp", "image_size": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "open_clip_config.json").write_text(__import__("json").dumps({"model_cfg": config}))
    check_clip_available(str(tmp_path))
    loaded = load_clip(str(tmp_path), device="cpu")
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.visual(image), model.visual(image))
        ids = loaded.token_ids(["a photo of a horse."])
        torch.testing.assert_close(loaded.model.encode_text(ids), model.encode_text(ids))


def test_the_job_names_segments_with_clip_and_checks_the_weights_first(tmp_path):
    """The model actor loads each config's CLIP once and writes the names as segment labels; a run
    whose CLIP weights are missing stops before any worker starts; configs without classes make
    every image need its own list."""
    from helpers import IMAGES, decoded

    from dsseg.job.config import SegmentJob
    from dsseg.job.model_stage import SegmentWorker
    from dsseg.job.runner import run_segment_job
    from dsseg.job.write import encode_row

    named = MethodSpec("diffseg", {**SMALL, "naming": "clip", "classes": CLASSES, "clip_model": "tiny-clip"})
    job = SegmentJob(input=str(IMAGES), output=str(tmp_path / "run"), backbone="tiny", device="cpu", configs=[named])
    assert job.clip_models == ["tiny-clip"] and not job.needs_item_classes
    worker = SegmentWorker(job)
    rows = [encode_row(row) for row in worker(decoded(job, {"135069.jpg", "horses/horse001.jpg"})).to_pylist()]
    assert len(rows) == 2 and all(row["status"] == "ok" for row in rows)
    for row in rows:
        assert {segment["label"] for segment in row["segments"]} <= {"background", *CLASSES}
    unlisted = SegmentJob(input=str(IMAGES), output=str(tmp_path / "b"), configs=[named.with_params(classes=[])])
    assert unlisted.needs_item_classes
    with pytest.raises(ConfigError, match="^classes: 4 image.*naming='clip'"):
        run_segment_job(dataclasses.replace(unlisted, backbone="tiny", device="cpu"))
    missing = dataclasses.replace(job, output=str(tmp_path / "c"), configs=(named.with_params(clip_model="/no/clip"),))
    with pytest.raises(ClipNotFoundError, match="/no/clip"):
        run_segment_job(missing)
