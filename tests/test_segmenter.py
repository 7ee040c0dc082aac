"""The segmenter's one entry point (``Segmenter.segment``), its steps as the explorer reuses them, its
batch, and the cross-field rules of ``dsseg.checks``."""

import numpy as np
import pytest

from dsseg.checks import (
    check_captioner,
    check_captioner_used,
    check_classes_given,
    needs_image_classes,
    shared_preparation,
)
from dsseg.errors import ConfigError
from dsseg.explore.session import ExploredImage, ImageExplorer
from dsseg.segmenter import Batch, Segmenter
from dsseg.spec import MethodSpec

SMALL = {"image_size": 64}  # 8² latents: quick forwards on CPU
SPECS = (
    MethodSpec("diffseg", {**SMALL, "kl_threshold": 0.8}),
    MethodSpec("diffseg", {**SMALL, "kl_threshold": 1.1, "classes": ["horse", "grass"]}),  # named: its own forward
    MethodSpec("ncut", {**SMALL, "power": 2}),  # DDIM inversion: its own forward
    MethodSpec("openvocab", {**SMALL, "classes": ["horse", "grass", "sky"]}),
    MethodSpec("diffseg", {**SMALL, "kl_threshold": 0.9, "resolutions": [8, 4]}),  # shares the first's forward
)


def same(a, b) -> bool:
    """Whether two segmentations (or model-frame results) agree in everything but timings."""
    return (
        np.array_equal(np.asarray(a.labels), np.asarray(b.labels))
        and a.names == b.names
        and a.scores == b.scores
        and a.parents == b.parents
    )


@pytest.fixture(scope="module")
def images(bsds_image):
    return [bsds_image, np.ascontiguousarray(bsds_image[::-1, ::2])]


def test_many_configs_give_each_config_what_it_gives_alone(tiny, images):
    many = Segmenter(tiny, SPECS)
    assert len(many.groups) == 4  # the two DiffSeg configs without classes share one forward
    batch = many.batch(images, classes=[None, ["sky", "rock"]])
    together = many.segment(batch)
    in_model_frame = many.segment(batch, frame="model")
    assert [len(per_image) for per_image in together] == [2] * len(SPECS)
    for index, spec in enumerate(SPECS):
        alone = Segmenter(tiny, spec)
        ((first, second),) = alone.segment(batch)
        assert same(together[index][0], first) and same(together[index][1], second), spec
        assert first.labels.shape == images[0].shape[:2] and second.labels.shape == images[1].shape[:2]
        (model_alone,) = alone.segment(batch, frame="model")
        for k in range(2):
            assert same(in_model_frame[index][k].result, model_alone[k].result)
            assert in_model_frame[index][k].caption == model_alone[k].caption
        assert {"encode", "unet", "aggregate", "segment", "upsample"} <= set(first.timings_ms)
    # a subset of the configs: the others get no results, the wanted ones the same
    subset = many.segment(batch, wanted={2, 3})
    assert [len(per_image) for per_image in subset] == [0, 0, 2, 2, 0]
    assert all(same(subset[i][k], together[i][k]) for i in (2, 3) for k in range(2))


def test_the_explorers_memoised_path_gives_the_labels_of_segment(tiny, bsds_image):
    explorer = ImageExplorer("tiny", device="cpu", params=SMALL, capacity=len(SPECS))
    explorer.backbones = {"tiny": tiny}
    photo = ExploredImage.of(bsds_image, "bsds")

    def segmented(spec: MethodSpec):
        segmenter = Segmenter(tiny, spec)
        return segmenter.segment(segmenter.batch([bsds_image]))[0][0]

    for spec in (*SPECS, SPECS[0]):  # the last view of SPECS[0] is its cached results
        view = explorer.view(photo, spec)
        assert same(view.segmentation, segmented(spec)), spec
    assert view.forward_cached
    # the threshold changed on a cached forward: the memoised KL distances give segment's labels
    moved = SPECS[0].with_params(kl_threshold=0.6)
    view = explorer.view(photo, moved)
    assert view.forward_cached and same(view.segmentation, segmented(moved))


def test_a_batch_is_checked_when_made(tiny, bsds_image):
    segmenter = Segmenter(tiny, SPECS[0])
    pixels, geometry = segmenter.prepare(bsds_image)
    with pytest.raises(ValueError, match=r"\(B, h, w, 3\) uint8"):
        Batch(pixels.astype(np.float32)[None], [geometry])
    with pytest.raises(ValueError, match=r"\(B, h, w, 3\) uint8"):
        Batch(pixels, [geometry])
    with pytest.raises(ValueError, match="1 geometries given for 2 images"):
        Batch(np.stack([pixels, pixels]), [geometry])
    with pytest.raises(ValueError, match="2 classes given for 1 images"):
        Batch(pixels[None], [geometry], classes=[None, ["a"]])
    with pytest.raises(ValueError, match="input size"):
        Batch(pixels[None, :32], [geometry])
    batch = Batch(pixels[None], [geometry], classes=[["horse"]], keys=[("a", "b.jpg")])
    assert batch.classes == (("horse",),) and batch.keys == (("a", "b.jpg"),) and len(batch) == 1
    assert batch.sizes == [(321, 321)]  # the centred square the input was resized from


def test_each_cross_field_rule_names_its_parameter():
    small, large = MethodSpec("diffseg", SMALL).resolved, MethodSpec("diffseg", {"image_size": 128}).resolved
    squash = MethodSpec("diffseg", {**SMALL, "geometry": "squash"}).resolved
    with pytest.raises(ConfigError, match="^image_size: all configs of a run must share image_size") as error:
        shared_preparation([small, large])
    with pytest.raises(ConfigError, match="these differ in geometry") as error:
        shared_preparation([small, squash])
    assert error.value.param == "geometry"
    assert shared_preparation([small, MethodSpec("ncut", SMALL).resolved]) == small.extraction.preparation
    named_by_caption = MethodSpec("diffseg", {"naming": "caption"}).resolved
    labelled = MethodSpec("openvocab", {"classes": ["horse"]}).resolved
    with pytest.raises(ConfigError, match=r"^captioner: the diffseg config reads captions \(naming='caption'\)"):
        check_captioner([small, named_by_caption], captioner=False, filter_reads_captions=False)
    with pytest.raises(ConfigError, match=r"the openvocab config reads captions \(the class filter\)"):
        check_captioner([small, labelled], captioner=False, filter_reads_captions=True)
    check_captioner([small, labelled], captioner=False, filter_reads_captions=False)
    check_captioner([named_by_caption], captioner=True, filter_reads_captions=True)
    with pytest.raises(ConfigError, match="^captioner: no config reads captions"):
        check_captioner_used([small, labelled], captioner=True, filter_may_read_captions=False)
    check_captioner_used([small, labelled], captioner=True, filter_may_read_captions=True)
    unlabelled = MethodSpec("openvocab").resolved
    assert needs_image_classes(unlabelled) and not needs_image_classes(unlabelled, filter_supplies_classes=True)
    assert not needs_image_classes(labelled) and not needs_image_classes(small)
    with pytest.raises(ConfigError, match="^classes: 2 images have no candidate classes, and the openvocab config"):
        check_classes_given([small, unlabelled], "2 images have")
    check_classes_given([small, unlabelled], None)
    check_classes_given([small, unlabelled], "2 images have", filter_supplies_classes=True)
