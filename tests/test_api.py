import numpy as np
import pytest
import torch
from helpers import IMAGES
from PIL import Image

import dsseg
from dsseg.benchmark.planted import planted_attention, planted_regions


@pytest.fixture(scope="module")
def attention():
    return planted_attention(planted_regions(32), resolutions=(32, 16, 8, 4), heads=3)


def test_segment_attention_accepts_heads_or_averaged_numpy_or_torch(attention):
    with_heads = dsseg.segment_attention(attention, output_size=(256, 256))
    averaged = {r: torch.as_tensor(a.mean(0)) for r, a in attention.items()}
    assert np.array_equal(dsseg.segment_attention(averaged, output_size=(256, 256)), with_heads)
    resized = dsseg.segment_attention(attention, output_size=(100, 300))
    assert resized.shape == (100, 300) and resized.dtype == np.int32
    assert set(np.unique(resized)) == set(np.unique(with_heads))


def test_segment_attention_errors_say_what_to_do(attention):
    with pytest.raises(ValueError, match="unknown method 'slic'; available"):
        dsseg.segment_attention(attention, method="slic")
    with pytest.raises(
        dsseg.ConfigError, match=r"^kl: is not a parameter of 'diffseg'; its parameters: \['anchor_spacing'"
    ):
        dsseg.segment_attention(attention, kl=1.0)
    with pytest.raises(ValueError, match="N = 1024 tokens, expected 4096"):
        dsseg.segment_attention({64: attention[32]})
    with pytest.raises(ValueError, match="empty"):
        dsseg.segment_attention({})


def test_segment_image_returns_labels_at_the_original_size(tiny, bsds_image):
    result = dsseg.segment_image(bsds_image, backbone=tiny, kl_threshold=0.5)
    assert result.labels.shape == (321, 481) and result.labels.dtype == np.int32
    assert result.method == "diffseg" and result.num_segments > 1
    assert np.array_equal(np.unique(result.labels), np.arange(result.num_segments))  # compact ids
    assert {"decode", "encode", "unet", "aggregate", "segment", "upsample"} <= set(result.timings_ms)
    rles = result.to_rles()
    assert [r["segment_id"] for r in rles] == list(range(result.num_segments))
    assert all(r["label"] is None and r["parent"] is None for r in rles)


def test_segments_lost_in_the_resize_are_dropped_and_ids_compacted():
    from dsseg.io.images import Geometry
    from dsseg.methods.base import MethodResult
    from dsseg.segmenter import to_segmentation
    from dsseg.timing import StageTimer

    labels = torch.zeros(8, 8, dtype=torch.int64)
    labels[:, 4:] = 2
    labels[3, 3] = 1  # one pixel: gone after shrinking 8×8 → 2×2
    result = MethodResult(labels=labels, names=["sky", "bird", "sea"], scores=[0.9, 0.5, 0.8])
    segmentation = to_segmentation(result, Geometry((2, 2), (0, 0, 2, 2), (8, 8)), "diffseg", StageTimer())
    assert segmentation.labels.tolist() == [[0, 1], [0, 1]]
    assert segmentation.names == ["sky", "sea"] and segmentation.scores == [0.9, 0.8]
    assert [s["label"] for s in segmentation.to_rles()] == ["sky", "sea"]


def test_path_pil_and_array_inputs_agree(tiny, bsds_image):
    path = IMAGES / "135069.jpg"
    small = {"image_size": 128, "kl_threshold": 0.5}  # the inputs' decoding is what is compared
    from_path = dsseg.segment_image(str(path), backbone=tiny, **small)
    from_pil = dsseg.segment_image(Image.open(path), backbone=tiny, **small)
    from_array = dsseg.segment_image(bsds_image, backbone=tiny, **small)
    assert np.array_equal(from_path.labels, from_array.labels)
    assert np.array_equal(from_pil.labels, from_array.labels)


def test_segment_image_with_aspect_geometry_and_sd2_size(tiny, bsds_image):
    aspect = dsseg.segment_image(bsds_image, backbone=tiny, geometry="aspect", image_size=256, kl_threshold=0.5)
    assert aspect.labels.shape == (321, 481) and aspect.num_segments > 1
    # Aspect geometry covers the whole image: its left and right borders are segmented, not copied.
    cropped = dsseg.segment_image(bsds_image, backbone=tiny, image_size=256, kl_threshold=0.5)
    assert (cropped.labels[:, :80] == cropped.labels[:, 80:81]).all()
    assert not (aspect.labels[:, :80] == aspect.labels[:, 80:81]).all()
    # SD 2.x size: 768 px → attention levels 96, 48, 24, 12.
    sd2 = dsseg.segment_image(bsds_image, backbone=tiny, image_size=768, resolutions=(48, 24, 12), kl_threshold=0.5)
    assert sd2.labels.shape == (321, 481) and sd2.num_segments > 1
    with pytest.raises(
        ValueError, match=r"do not exist at image_size 768: the attention levels are \[96, 48, 24, 12\]"
    ):
        dsseg.segment_image(bsds_image, backbone=tiny, image_size=768, resolutions=(64, 32))


def test_segment_image_rejects_unknown_parameters(tiny, bsds_image):
    with pytest.raises(dsseg.ConfigError, match="time_step: .*extraction parameters: .*'timestep'"):
        dsseg.segment_image(bsds_image, backbone=tiny, time_step=100)


def test_extraction_captures_only_the_levels_the_method_aggregates():
    resolved = dsseg.MethodSpec("diffseg", {"resolutions": [64, 32, 16], "timestep": 100}).resolved
    assert resolved.params.resolutions == (64, 32, 16) and resolved.extraction.capture.capture_resolutions == (
        64,
        32,
        16,
    )
    assert resolved.extraction.noising.timestep == 100
    default = dsseg.MethodSpec("diffseg").resolved
    assert default.extraction.capture.capture_resolutions is None  # DiffSeg's default aggregates every level
