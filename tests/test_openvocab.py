"""Open-vocabulary labelling (DiffSegmenter) and segment naming: prompts, planted maps, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsseg.api import segment_image
from dsseg.io.masks import decode_segments
from dsseg.methods import get_method, name_results
from dsseg.methods.base import MethodResult
from dsseg.methods.openvocab import OpenVocabConfig, labels_from_scores, name_segments, segment_openvocab
from dsseg.model.config import ExtractConfig
from dsseg.model.extract import AttentionBundle, AttentionExtractor
from dsseg.model.prompts import class_prompt_plan, joint_prompt_plans, phrase_positions
from dsseg.model.tokenizer import clip_tokenizer
from dsseg.model.vocabularies import IGNORE_LABEL, get_vocabulary
from dsseg.segmenter import Segmenter
from dsseg.spec import MethodSpec

GRID = (16, 16)
LEVELS = [(16, 16), (8, 8), (4, 4), (2, 2)]


@pytest.mark.parametrize("name", ["horse", "traffic light", "potted plant", "hippopotamus", "tv monitor"])
def test_class_token_positions_point_at_the_name(name):
    tokenizer = clip_tokenizer()
    plan = class_prompt_plan(tokenizer, "a photograph of a {class}", name, descriptors=("brown",))
    sequence = tokenizer(plan.text).input_ids
    (tokens,) = plan.classes
    name_ids = tokenizer(name, add_special_tokens=False).input_ids
    assert plan.text == f"a photograph of a brown {name}"
    assert [sequence[p] for p in tokens.name] == name_ids
    assert tokenizer.decode([sequence[p] for p in tokens.name]).strip() == name
    assert tokenizer.decode([sequence[p] for p in tokens.descriptors]).strip() == "brown"
    assert plan.weighted_positions == tokens.name
    readout = plan.readout()
    assert readout.shape == (77, 1) and readout.sum().item() == pytest.approx(1.0)
    assert readout[list(tokens.name), 0].sum().item() == pytest.approx(0.5)


def test_joint_prompt_finds_each_name_in_order_and_rejects_split_names():
    tokenizer = clip_tokenizer()
    (plan,) = joint_prompt_plans(tokenizer, ["hot dog", "dog", "potted plant"])
    sequence = tokenizer(plan.text).input_ids
    found = [tokenizer.decode([sequence[p] for p in tokens.name]).strip() for tokens in plan.classes]
    assert found == ["hot dog", "dog", "potted plant"]
    assert plan.classes[1].name[0] > plan.classes[0].name[-1]  # not the "dog" inside "hot dog"
    (caption,) = joint_prompt_plans(tokenizer, ["grass", "horse"], caption="a horse grazing on grass")
    assert [
        tokenizer.decode([tokenizer(caption.text).input_ids[p] for p in t.name]).strip() for t in caption.classes
    ] == ["grass", "horse"]
    with pytest.raises(ValueError, match="whole tokens"):
        phrase_positions(tokenizer, "a photograph of horses", "horse")
    with pytest.raises(ValueError, match="exactly once"):
        class_prompt_plan(tokenizer, "a photograph", "horse")


def test_a_large_vocabulary_is_split_over_joint_prompts_that_fit_clip():
    tokenizer = clip_tokenizer()
    names = ["a", *get_vocabulary("coco80")]  # "a" must not be found in the prefix "a photograph of"
    plans = joint_prompt_plans(tokenizer, names)
    assert len(plans) > 1
    found = []
    for plan in plans:
        sequence = tokenizer(plan.text).input_ids
        assert len(sequence) <= 77 and plan.readout().shape == (77, len(plan.classes))
        found += [tokenizer.decode([sequence[p] for p in tokens.name]).strip() for tokens in plan.classes]
    assert found == names
    assert plans[0].classes[0].name[0] > len(tokenizer("a photograph of", add_special_tokens=False).input_ids)


def _regions() -> torch.Tensor:
    """(16, 16) planted map: 1 = horse (top-left block), 2 = grass (bottom rows), 0 = background."""
    regions = torch.zeros(GRID, dtype=torch.long)
    regions[1:7, 1:7] = 1
    regions[11:, :] = 2
    return regions


def _planted_bundle(
    regions: torch.Tensor, names: tuple[str, ...], noise: float = 0.0, seed: int = 0
) -> AttentionBundle:
    """Cross-attention of class k high on region k (pooled to the coarser levels, plus noise) and
    self-attention uniform within each region."""
    generator = torch.Generator().manual_seed(seed)
    indicators = torch.stack([(regions == k + 1).float() for k in range(len(names))])  # (C, 16, 16)
    class_attention = {}
    for grid in LEVELS:
        pooled = F.adaptive_avg_pool2d(indicators[None], grid)[0]
        class_attention[grid] = (pooled + noise * torch.randn(pooled.shape, generator=generator)).reshape(
            len(names), -1
        )
    flat = regions.reshape(-1)
    same = (flat[:, None] == flat[None, :]).float()
    self_attention = same / same.sum(1, keepdim=True)
    return AttentionBundle(
        self_attention={GRID: self_attention[None]},
        cross_attention={},
        latent_hw=GRID,
        timestep=100,
        class_names=(names,),
        class_attention=(class_attention,),
    )


def test_planted_attention_gives_the_planted_regions_and_background():
    regions = _regions()
    bundle = _planted_bundle(regions, ("horse", "grass"), noise=0.3)
    config = OpenVocabConfig(upsample_factor=1)
    (result,) = segment_openvocab(bundle, config)
    assert result.names == ["background", "horse", "grass", "ignore"]
    assert torch.equal(result.labels, regions)
    assert result.scores[0] is None and result.scores[1] > 0.9 and result.scores[2] > 0.9
    # The self-attention refinement is what cleans the noisy cross-attention.
    (unrefined,) = segment_openvocab(bundle, OpenVocabConfig(upsample_factor=1, refine=False))
    assert (unrefined.labels != regions).sum() > 0


def test_planted_labels_at_pixel_size_follow_the_regions():
    regions = _regions()
    (result,) = segment_openvocab(_planted_bundle(regions, ("horse", "grass")), OpenVocabConfig())
    assert result.labels.shape == (128, 128)
    expected = regions.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert (result.labels == expected).float().mean() > 0.97  # only boundary pixels may differ


def test_ignore_band_marks_exactly_the_low_margin_pixels():
    generator = torch.Generator().manual_seed(3)
    scores = torch.rand(3, 40, 50, generator=generator)
    labels = labels_from_scores(scores, background_threshold=0.4, ignore_margin=0.1).numpy()
    channels = np.concatenate([np.full((1, 40, 50), 0.4, dtype=np.float32), scores.numpy()])
    ordered = np.sort(channels, axis=0)
    uncertain = ordered[-1] - ordered[-2] < 0.1
    assert 0 < uncertain.sum() < uncertain.size
    np.testing.assert_array_equal(labels == IGNORE_LABEL, uncertain)
    np.testing.assert_array_equal(labels[~uncertain], channels.argmax(0)[~uncertain])


def test_ignore_segment_is_named_and_background_kept_first():
    regions = _regions()
    bundle = _planted_bundle(regions, ("horse", "grass"), noise=0.3)
    (result,) = segment_openvocab(bundle, OpenVocabConfig(upsample_factor=1, refine=False, ignore_margin=0.2))
    assert result.names[-1] == "ignore" and result.background
    assert (result.labels == 3).any() and set(result.labels.unique().tolist()) <= {0, 1, 2, 3}


def test_naming_assigns_the_planted_noun_to_each_region():
    regions = _regions()
    bundle = _planted_bundle(regions, ("horse", "grass"))
    unnamed = MethodResult(labels=regions.repeat_interleave(8, 0).repeat_interleave(8, 1))
    for mode in ("majority", "mean"):
        named = name_segments(unnamed, bundle, mode)
        assert named.names[1:] == ["horse", "grass"]
        assert all(0.0 <= score <= 1.0 for score in named.scores)
    majority = name_segments(unnamed, bundle, "majority")
    assert majority.scores[1] > 0.9 and majority.scores[2] > 0.9  # share of the segment's votes


def _count_unet_calls(backbone):
    calls = []
    handle = backbone.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    return calls, handle


def test_one_unet_call_per_class_batch_equals_class_by_class(tiny):
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    classes = [("horse", "grass", "sky"), ("dog", "traffic light")]
    bundles = {}
    for size in (2, 1):
        extraction = MethodSpec("openvocab", {"image_size": 128, "class_batch_size": size}).resolved.extraction
        extractor = AttentionExtractor(tiny, extraction)
        calls, handle = _count_unet_calls(tiny)
        try:
            bundles[size] = extractor(images, classes=classes)
        finally:
            handle.remove()
        assert calls == ([2, 2, 1] if size == 2 else [1] * 5)  # 5 prompts, the classes in the batch dimension
    batched, single = bundles[2], bundles[1]
    assert batched.class_names == tuple(classes)
    for i, names in enumerate(classes):
        for grid, maps in single.class_attention[i].items():
            assert batched.class_attention[i][grid].shape == (len(names), grid[0] * grid[1])
            # Equal up to float32 summation order (kernels differ with the batch size).
            torch.testing.assert_close(batched.class_attention[i][grid], maps, atol=1e-4, rtol=1e-3)
    for grid, maps in single.self_attention.items():
        torch.testing.assert_close(batched.self_attention[grid], maps, atol=3e-5, rtol=1e-3)
        torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:2]), atol=1e-4, rtol=0)
    config = OpenVocabConfig()
    for a, b in zip(segment_openvocab(batched, config), segment_openvocab(single, config)):
        assert (a.labels == b.labels).float().mean() > 0.999


def test_class_weight_scale_multiplies_every_name_token(tiny):
    config = ExtractConfig.from_params(
        {"classes": ("horse",), "class_template": "a photograph of a {class}", "class_weight": 1.21}
    )
    assert config.prompting.class_weighting == "scale"  # the earlier outputs' weighting, kept for their ids
    extractor = AttentionExtractor(tiny, config)
    (plan,) = extractor.prompt_plans(["horse"])
    weighted = extractor._class_condition(plan)
    plain = tiny.encode_prompt(plan.text)
    ratio = weighted / plain
    torch.testing.assert_close(ratio[0, 5], torch.full_like(ratio[0, 5], 1.21))
    others = [p for p in range(77) if p != 5]
    torch.testing.assert_close(weighted[0, others], plain[0, others])


def test_compel_weighting_moves_the_last_name_word_away_from_the_empty_prompt(tiny):
    """ "light++" as Compel computes it: e + 1.21·(z − e) on the tokens of the name's last word, z the
    prompt's and e the empty prompt's text-encoder states, straight from the text encoder."""
    prompting = {"class_template": "a photography of {class}", "class_weighting": "compel", "class_weight": 1.21}
    extractor = AttentionExtractor(tiny, ExtractConfig.from_params({"classes": ("traffic light",), **prompting}))
    (plan,) = extractor.prompt_plans(["traffic light"])
    assert plan.text == "a photography of traffic light"
    tokenizer = tiny.tokenizer

    def states(text: str) -> torch.Tensor:
        ids = tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
        return tiny.text_encoder(ids)[0][0]

    z, e = states(plan.text), states("")
    light = len(tokenizer("a photography of traffic", add_special_tokens=False).input_ids) + 1
    assert plan.weighted_positions == (light,)  # "traffic" keeps its weight, as Compel's "traffic light++"
    expected = z.clone()
    expected[light] = e[light] + 1.21 * (z[light] - e[light])
    torch.testing.assert_close(extractor._class_condition(plan)[0], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected[light], 1.21 * z[light], atol=1e-3)  # not the plain scaling


def test_segment_image_openvocab_end_to_end(tiny, bsds_image):
    result = segment_image(
        bsds_image, method="openvocab", classes=["horse", "grass", "traffic light"], backbone=tiny, image_size=128
    )
    assert result.names[0] == "background"
    assert result.labels.shape == bsds_image.shape[:2] and result.labels.dtype == np.int32
    assert 0 <= result.labels.min() and result.labels.max() < len(result.names)
    assert set(result.names) <= {"background", "horse", "grass", "traffic light", "ignore"}
    segments = result.to_rles()
    np.testing.assert_array_equal(decode_segments(segments), result.labels)
    present = {result.names[s] for s in np.unique(result.labels)}
    assert {s["label"] for s in segments} == present  # one segment per present class
    with pytest.raises(ValueError, match="classes"):
        segment_image(bsds_image, method="openvocab", backbone=tiny)


def test_unsupervised_segments_named_in_the_same_forward(tiny, bsds_image):
    segmenter = Segmenter(tiny, "diffseg", {"image_size": 128, "classes": ("horse", "grass"), "kl_threshold": 0.5})
    assert segmenter.config.naming == "majority" and segmenter.config.extraction.prompting.class_template is None
    batch = segmenter.batch([bsds_image] * 2, classes=[None, ["sky", "rock"]])
    calls, handle = _count_unet_calls(tiny)
    try:
        ((named, own),) = segmenter.segment(batch)
    finally:
        handle.remove()
    assert calls == [2]  # one joint prompt per image, one call for the batch
    vocabulary = Segmenter(tiny, "diffseg", {"image_size": 128, "vocabulary": "coco80", "kl_threshold": 0.5})
    ((coco,),) = vocabulary.segment(vocabulary.batch([bsds_image]))
    assert set(coco.names) <= set(get_vocabulary("coco80"))  # 80 names over several prompts
    assert set(named.names) <= {"horse", "grass"} and set(own.names) <= {"sky", "rock"}
    assert len(named.names) == named.num_segments and all(0 <= s <= 1 for s in named.scores)


def test_class_config_errors():
    with pytest.raises(ValueError, match="list of names"):
        ExtractConfig.from_params({"classes": "horse"})
    with pytest.raises(ValueError, match="unknown vocabulary"):
        ExtractConfig.from_params({"vocabulary": "imagenet"})
    with pytest.raises(ValueError, match="repeat"):
        ExtractConfig.from_params({"classes": ("horse", "horse")})
    with pytest.raises(ValueError, match="class_template"):
        ExtractConfig.from_params({"classes": ("horse",), "descriptors": {"horse": ("brown",)}})
    assert len(ExtractConfig.from_params({"vocabulary": "voc20"}).prompting.classes) == 20
    with pytest.raises(ValueError, match="background_threshold"):
        OpenVocabConfig(background_threshold=2.0)


def test_naming_leaves_openvocab_names_alone():
    bundle = _planted_bundle(_regions(), ("horse", "grass"))
    results = get_method("openvocab").segment(bundle, OpenVocabConfig(upsample_factor=1), None)
    (result,) = name_results(results, bundle)
    assert result.names[:3] == ["background", "horse", "grass"]


def test_a_class_filter_narrows_the_candidates(tiny, bsds_image):
    seen = []

    def keep_first(images, candidates):
        seen.append(([image.shape for image in images], [list(c) for c in candidates]))
        return [list(c[:1]) for c in candidates]

    result = segment_image(
        bsds_image,
        method="openvocab",
        classes=["horse", "grass", "sky"],
        backbone=tiny,
        image_size=128,
        class_filter=keep_first,
    )
    assert seen == [([(128, 128, 3)], [["horse", "grass", "sky"]])]
    assert set(result.names) <= {"background", "horse", "ignore"}

    def invents(images, candidates):
        return [["unicorn"] for _ in candidates]

    with pytest.raises(ValueError, match="subset"):
        segment_image(
            bsds_image, method="openvocab", classes=["horse"], backbone=tiny, image_size=128, class_filter=invents
        )


def test_clip_filter_loads_a_saved_checkpoint_and_keeps_subsets(tmp_path, bsds_image):
    from transformers import CLIPConfig, CLIPModel

    from dsseg.model.class_filters import ClassFilterNotFoundError, load_class_filter

    text = dict(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(tmp_path / "clip")
    clip_tokenizer().save_pretrained(tmp_path / "clip")
    clip = load_class_filter(f"clip:{tmp_path / 'clip'}", device="cpu", offline=True)
    images = [bsds_image, bsds_image[::-1, :, ::-1].copy()]
    candidates = [["horse", "grass", "sky"], ["dog", "cat"]]
    clip.min_probability = 0.0
    assert clip(images, candidates) == candidates  # every candidate clears a zero threshold, order kept
    clip.top_k = 1
    kept = clip(images, candidates)
    assert [len(k) for k in kept] == [1, 1] and all(set(k) <= set(c) for k, c in zip(kept, candidates))
    assert clip.pixels(images).shape == (2, 3, 32, 32)
    with pytest.raises(ClassFilterNotFoundError, match="CLIP"):
        load_class_filter(f"clip:{tmp_path / 'missing'}", device="cpu", offline=True)
    with pytest.raises(ValueError, match="clip:MODEL"):
        load_class_filter("just-a-name")
