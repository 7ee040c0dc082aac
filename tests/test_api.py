import numpy as np
import pytest
import torch
from PIL import Image

import dsseg
from conftest import IMAGES
from planted import planted_attention, planted_regions


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
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['kl'\].*valid"):
        dsseg.segment_attention(attention, kl=1.0)
    with pytest.raises(ValueError, match="N = 1024 tokens, expected 4096"):
        dsseg.segment_attention({64: attention[32]})
    with pytest.raises(ValueError, match="empty"):
        dsseg.segment_attention({})


def test_segment_image_returns_labels_at_the_original_size(tiny, bsds_image):
    result = dsseg.segment_image(bsds_image, backbone=tiny)
    assert result.labels.shape == (321, 481) and result.labels.dtype == np.int32
    assert result.method == "diffseg" and result.num_segments == len(np.unique(result.labels))
    assert {"decode", "encode", "unet", "aggregate", "segment", "upsample"} <= set(result.timings_ms)
    rles = result.to_rles()
    assert sum(r["area"] for r in rles) == 321 * 481


def test_path_pil_and_array_inputs_agree(tiny, bsds_image):
    path = IMAGES / "135069.jpg"
    from_path = dsseg.segment_image(str(path), backbone=tiny, kl_threshold=0.5)
    from_pil = dsseg.segment_image(Image.open(path), backbone=tiny, kl_threshold=0.5)
    from_array = dsseg.segment_image(bsds_image, backbone=tiny, kl_threshold=0.5)
    assert np.array_equal(from_path.labels, from_array.labels)
    assert np.array_equal(from_pil.labels, from_array.labels)


def test_segment_image_with_aspect_geometry_and_sd2_size(tiny, bsds_image):
    aspect = dsseg.segment_image(bsds_image, backbone=tiny, geometry="aspect", image_size=256)
    assert aspect.labels.shape == (321, 481)
    sd2 = dsseg.segment_image(bsds_image, backbone=tiny, image_size=768, resolutions=(48, 24, 12))
    assert sd2.labels.shape == (321, 481)


def test_segment_image_rejects_unknown_parameters(tiny, bsds_image):
    with pytest.raises(TypeError, match="extraction parameters"):
        dsseg.segment_image(bsds_image, backbone=tiny, timesteps=100)
