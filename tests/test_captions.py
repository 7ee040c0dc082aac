"""Captions: nouns from written captions, a tiny BLIP through the real loading path, segments
named by captions, DiffSegmenter's augmented prompts and caption class filter, the job's column."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import IMAGES, WrittenCaptions, decoded

from dsseg import segment_image
from dsseg.errors import ConfigError
from dsseg.model.captioner import CaptionerNotFoundError, build_random_captioner, load_captioner
from dsseg.model.class_filters import UnionClassFilter, load_class_filter
from dsseg.model.nouns import caption_nouns, classes_named
from dsseg.model.prompts import class_prompt_plan, joint_prompt_plans, token_ids
from dsseg.model.tokenizer import clip_tokenizer
from dsseg.model.vocabularies import VOC20
from dsseg.segmenter import Segmenter
from dsseg.spec import MethodSpec


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    """The tiny BLIP, saved with save_pretrained and loaded back through load_captioner."""
    folder = tmp_path_factory.mktemp("blip")
    model, processor = build_random_captioner("tiny", seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return load_captioner(str(folder), device="cpu", offline=True)


def test_nouns_are_read_singular_longest_first_and_once():
    nouns = caption_nouns("Two horses standing in a grassy field next to a traffic light, and a horse.")
    assert [(n.name, n.phrase) for n in nouns] == [
        ("horse", "horses"),
        ("field", "field"),
        ("traffic light", "traffic light"),
    ]
    nouns = caption_nouns("a man and two women riding bicycles on the street under cloudy skies near buses and benches")
    assert [n.name for n in nouns] == ["man", "woman", "bicycle", "street", "sky", "bus", "bench"]
    assert [n.phrase for n in nouns][:3] == ["man", "women", "bicycles"]
    assert caption_nouns("people in the grass") == caption_nouns("PEOPLE in the grass!")
    assert [n.name for n in caption_nouns("people in the grass")] == ["person", "grass"]
    assert caption_nouns("a view of the front") == []  # nouns that name nothing to segment


def test_a_repeated_word_is_found_where_its_noun_is_not_inside_an_earlier_phrase():
    from dsseg.model.caption_prompts import located_nouns

    tokenizer, caption = clip_tokenizer(), "a hot dog next to a dog"
    nouns = located_nouns(tokenizer, caption)
    assert [(n.name, n.phrase) for n in nouns] == [("hot dog", "hot dog"), ("dog", "dog")]
    plan = joint_prompt_plans(tokenizer, [n.name for n in nouns], caption, [n.phrase for n in nouns])[0]
    assert [c.name for c in plan.classes] == [(2, 3), (7,)]


def test_caption_nouns_name_class_list_entries_through_synonyms():
    nouns = [n.name for n in caption_nouns("a man on a motorbike next to an airplane and a sofa")]
    assert classes_named(nouns, VOC20) == ["aeroplane", "motorbike", "person", "sofa"]
    assert classes_named(["puppy"], ("cat", "dog")) == ["dog"]
    assert classes_named(["tree"], VOC20) == []
    assert classes_named(["table"], VOC20) == ["dining table"]


def test_the_tiny_blip_loads_back_and_captions_batches_as_single_images(tiny_blip, bsds_image):
    reference = load_captioner("tiny", device="cpu")
    images = [bsds_image, bsds_image[::2, ::2].copy(), np.full((40, 60, 3), 200, np.uint8)]
    batched = tiny_blip.caption(images)
    assert batched == reference.caption(images)  # the saved and reloaded model is the same model
    assert batched == [tiny_blip.caption([image])[0] for image in images]
    assert all(caption_nouns(caption) for caption in batched)  # its vocabulary is mostly names
    pairs = [(0, "a photograph of a horse"), (1, "a photograph of a traffic light"), (0, "a photograph of a dog")]
    continued = tiny_blip.complete(images, pairs)
    assert continued == [tiny_blip.complete(images, [pair])[0] for pair in pairs]
    for (index, prompt), text in zip(pairs, continued):  # the continuation is exactly what follows the prompt
        inputs = tiny_blip.processor(images=[images[index]], text=prompt, return_tensors="pt")
        whole = tiny_blip.model.generate(**inputs, **tiny_blip.decoding)
        assert tiny_blip.processor.decode(whole[0], skip_special_tokens=True) == f"{prompt} {text}"


def test_missing_captioner_weights_say_what_to_do(tmp_path):
    with pytest.raises(
        CaptionerNotFoundError, match="(?s)nothing: no such folder.*huggingface-cli download.*--captioner tiny"
    ):
        load_captioner(str(tmp_path / "nothing"), device="cpu")
    with pytest.raises(CaptionerNotFoundError, match="offline is set"):
        load_captioner("someone/not-a-cached-blip", device="cpu", offline=True)


def test_augmented_class_prompts_fuse_a_leading_participle_with_the_name():
    tokenizer = clip_tokenizer()
    plan = class_prompt_plan(tokenizer, "a photograph of a {class}", "horse", continuation="standing in a field")
    assert plan.text == "a photograph of a horse standing in a field"
    name, standing = (
        len(token_ids(tokenizer, "a photograph of a")) + 1,
        len(token_ids(tokenizer, "a photograph of a horse")) + 1,
    )
    assert plan.classes[0].name == (name,) and plan.classes[0].descriptors == (standing,)
    plain = class_prompt_plan(tokenizer, "a photograph of a {class}", "horse", continuation="in a field")
    assert plain.classes[0].descriptors == ()
    caption = joint_prompt_plans(tokenizer, ["horse", "grass"], "two horses eating grass", ["horses", "grass"])[0]
    assert caption.text == "two horses eating grass" and [c.name for c in caption.classes] == [(2,), (4,)]


def test_naming_by_caption_is_naming_by_the_captions_nouns_with_the_caption_as_prompt(tiny, bsds_image):
    captioner = WrittenCaptions("a horse standing on the grass near a tree")
    params = {"image_size": 128, "kl_threshold": 0.5}
    named = segment_image(bsds_image, "diffseg", tiny, captioner=captioner, naming="caption", **params)
    by_hand = segment_image(
        bsds_image,
        "diffseg",
        tiny,
        prompt=captioner.captions[0],
        classes=["horse", "grass", "tree"],
        naming="mean",
        **params,
    )
    assert named.caption == captioner.captions[0] and by_hand.caption is None
    assert named.names == by_hand.names and set(named.names) <= {"horse", "grass", "tree"}
    np.testing.assert_array_equal(named.labels, by_hand.labels)
    # and with the tiny BLIP: the caption is the model's, the names among its nouns
    blip = load_captioner("tiny", device="cpu")
    result = segment_image(bsds_image, "ncut", tiny, captioner=blip, naming="caption", **{"image_size": 128})
    segmenter = Segmenter(tiny, MethodSpec("ncut", {"image_size": 128}))
    assert result.caption == blip.caption([segmenter.prepare(bsds_image)[0]])[0]
    assert result.names and set(result.names) <= {n.name for n in caption_nouns(result.caption)}


def test_caption_settings_are_checked_before_any_model_loads(tiny):
    with pytest.raises(ConfigError, match="leave out classes"):
        MethodSpec("diffseg", {"naming": "caption", "classes": ["horse"]})
    with pytest.raises(ConfigError, match="descriptors='caption'"):
        MethodSpec("openvocab", {"naming": "caption", "classes": ["horse"]})
    with pytest.raises(ConfigError, match="set class_template"):
        MethodSpec("diffseg", {"descriptors": "caption", "classes": ["horse"]})
    with pytest.raises(ConfigError, match="descriptors: expects"):
        MethodSpec("openvocab", {"descriptors": "captions", "classes": ["horse"]})
    with pytest.raises(ConfigError, match="level_weights: expects a list"):
        MethodSpec("openvocab", {"level_weights": "caption", "classes": ["horse"]})
    with pytest.raises(ConfigError, match="give a captioner"):
        Segmenter(tiny, MethodSpec("diffseg", {"naming": "caption"}))
    with pytest.raises(ConfigError, match="give a captioner"):
        Segmenter(tiny, MethodSpec("openvocab", {"classes": ["horse"]}), class_filter=load_class_filter("caption"))


def test_augmented_prompts_continue_each_class_prompt_with_its_conditional_caption(tiny, bsds_image):
    import torch

    from dsseg.model.extract import to_model_input
    from dsseg.model.prompts import ImageTexts

    captioner = WrittenCaptions(continuation="grazing on a hill")
    spec = MethodSpec("openvocab", {"image_size": 128, "classes": ["horse", "grass"], "descriptors": "caption"})
    segmenter = Segmenter(tiny, spec, captioner=captioner)
    batch = segmenter.batch([bsds_image])
    ((augmented,),) = segmenter.segment(batch)
    assert captioner.calls == [("complete", [(0, "a photograph of horse"), (0, "a photograph of grass")])]
    assert augmented.caption == "a photograph of horse grazing on a hill; a photograph of grass grazing on a hill"
    extractor = segmenter.groups[0].extractor
    texts = ImageTexts(continuations={"horse": "grazing on a hill", "grass": "grazing on a hill"})
    assert [plan.text for plan in extractor.prompt_plans(["horse"], texts)] == [
        "a photograph of horse grazing on a hill"
    ]
    assert [plan.text for plan in extractor.prompt_plans(["horse"])] == ["a photograph of horse"]
    images = to_model_input(batch.pixels, tiny.device, tiny.dtype)
    with_texts = extractor(images, classes=[["horse", "grass"]], texts=[texts]).class_attention[0]
    without = extractor(images, classes=[["horse", "grass"]]).class_attention[0]
    assert not any(torch.allclose(with_texts[grid], without[grid]) for grid in without)  # the prompts changed the maps


def test_the_caption_filter_keeps_the_classes_the_caption_names(tiny, bsds_image):
    captioner = WrittenCaptions("two horses on a lawn", "an empty room")
    spec = MethodSpec("openvocab", {"image_size": 64, "classes": ["horse", "dog", "grass"]})
    segmenter = Segmenter(tiny, spec, class_filter=load_class_filter("caption"), captioner=captioner)
    batch = segmenter.batch([bsds_image] * 2)
    (output,) = segmenter.segment(batch, frame="model")
    assert output[0].result.names == ["background", "horse", "grass", "ignore"]  # lawn: grass
    assert output[1].result.names == ["background", "ignore"]  # named nothing: all background
    assert [out.caption for out in output] == ["two horses on a lawn", "an empty room"]
    assert captioner.calls == [("caption", 2)]  # one captioning per batch
    sweep = [
        MethodSpec("openvocab", {"image_size": 64, "classes": ["horse"], "descriptors": "caption", "timestep": t})
        for t in (50, 100)
    ]
    captioner.calls.clear()
    Segmenter(tiny, sweep, captioner=captioner).segment(batch)
    assert captioner.calls == [
        ("complete", [(0, "a photograph of horse"), (1, "a photograph of horse")])
    ]  # once for both
    union = UnionClassFilter(load_class_filter("caption"), lambda images, candidates: [c[1:2] for c in candidates])
    kept = union([bsds_image], [["horse", "dog", "grass"]], captions=["a horse"])
    assert kept == [["horse", "dog"]] and union.needs_captions


def test_jobs_need_a_captioner_exactly_when_a_config_reads_captions(tmp_path):
    from dsseg.job.config import SegmentJob

    naming = [MethodSpec("diffseg", {"naming": "caption"})]
    with pytest.raises(ConfigError, match="captioner: the diffseg config reads captions"):
        SegmentJob(input=str(IMAGES), output=str(tmp_path), configs=naming)
    with pytest.raises(ConfigError, match="captioner: no config reads captions"):
        SegmentJob(input=str(IMAGES), output=str(tmp_path), captioner="tiny")
    filtered = [MethodSpec("openvocab", {"classes": ["horse"]})]
    with pytest.raises(ConfigError, match="captioner"):
        SegmentJob(input=str(IMAGES), output=str(tmp_path), configs=filtered, class_filter="caption")
    with pytest.raises(ConfigError, match="class_filter: expects"):
        SegmentJob(input=str(IMAGES), output=str(tmp_path), configs=filtered, class_filter="captions")
    ids = {
        name: SegmentJob(input=str(IMAGES), output=str(tmp_path), configs=naming, captioner=name).config_ids()[0]
        for name in ("tiny", "Salesforce/blip-image-captioning-base")
    }
    assert len(set(ids.values())) == 2  # the captioner names the segments, so it is part of the id
    # a factory's filter may read captions: a captioner is accepted with it
    factory = SegmentJob(
        input=str(IMAGES), output=str(tmp_path), configs=filtered, class_filter="pkg.mod:make", captioner="tiny"
    )
    # a class filter does not narrow names read from captions, so it stays out of their ids
    unfiltered = SegmentJob(input=str(IMAGES), output=str(tmp_path), configs=naming, captioner="tiny")
    with_filter = dataclasses.replace(unfiltered, class_filter="caption")
    assert unfiltered.config_ids() == with_filter.config_ids() and factory.config_ids()


def test_the_job_writes_each_images_caption(tmp_path):
    from dsseg.job.config import SegmentJob
    from dsseg.job.model_stage import SegmentWorker
    from dsseg.job.write import encode_row

    job = SegmentJob(
        input=str(IMAGES), output=str(tmp_path), backbone="tiny", device="cpu", captioner="tiny",
        configs=[MethodSpec("diffseg", {"image_size": 128, "naming": "caption"}), MethodSpec("diffseg", {"image_size": 128})],
    )  # fmt: skip
    rows = [
        encode_row(row) for row in SegmentWorker(job)(decoded(job, {"135069.jpg", "horses/horse001.jpg"})).to_pylist()
    ]
    named = [row for row in rows if row["config_id"] == job.config_ids()[0]]
    plain = [row for row in rows if row["config_id"] == job.config_ids()[1]]
    assert len(named) == len(plain) == 2 and all(row["status"] == "ok" for row in rows)
    for row in named:
        nouns = {n.name for n in caption_nouns(row["caption"])}
        assert nouns and {segment["label"] for segment in row["segments"]} <= nouns
    assert all(row["caption"] is None for row in plain)


def test_results_written_before_the_caption_column_read_with_new_ones(tmp_path):
    import pyarrow as pa

    from dsseg.io.results import read_results, write_parts
    from dsseg.io.schema import OUTPUT_SCHEMA

    def row(image_id: str, caption: str | None) -> dict:
        identity = {"image_id": image_id, "source": image_id, "width": 4, "height": 4, "method": "diffseg"}
        return identity | {"config_id": "c1", "status": "ok", "error": None, "segments": [], "caption": caption}

    new = pa.Table.from_pylist([row("b", "a horse")], schema=OUTPUT_SCHEMA)
    old_timings = pa.struct([f for f in OUTPUT_SCHEMA.field("timings_ms").type if f.name != "caption"])
    old_schema = pa.schema(
        [
            f if f.name != "timings_ms" else pa.field("timings_ms", old_timings)
            for f in OUTPUT_SCHEMA
            if f.name != "caption"
        ]
    )
    old = pa.Table.from_pylist([row("a", None)], schema=old_schema)
    write_parts(old, str(tmp_path))
    write_parts(new, str(tmp_path))
    rows = sorted(read_results(str(tmp_path)).to_pylist(), key=lambda r: r["image_id"])
    assert [(r["image_id"], r["caption"]) for r in rows] == [("a", None), ("b", "a horse")]
