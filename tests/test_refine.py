import pytest
import torch

from dsseg.methods.pamr import neighbour_offsets, pamr, pamr_affinities


def _two_regions():
    image = -torch.ones(1, 3, 32, 32)
    image[..., 16:] = 1.0  # dark left half, bright right half
    scores = torch.zeros(1, 1, 32, 32)
    scores[..., :16] = 1.0
    return image, scores


def test_affinities_are_a_distribution_over_the_neighbours():
    image = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    weights = pamr_affinities(image, dilations=(1, 3))
    assert weights.shape == (2, 16, 20, 24) and len(neighbour_offsets((1, 3))) == 16
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 20, 24))
    assert weights.min() >= 0


def test_pamr_fills_holes_inside_a_region_and_stops_at_edges():
    image, scores = _two_regions()
    noisy = scores.clone()
    noisy[0, 0, 5:7, 5:7] = 0.0  # a hole inside the left region
    noisy[0, 0, 8, 24] = 1.0  # a speck inside the right region
    refined = pamr(image, noisy, iterations=10, dilations=(1, 2))
    assert refined[0, 0, 5:7, 5:7].min() > 0.7  # the hole is filled from its neighbours
    assert refined[0, 0, :, :16].min() > 0.7
    assert refined[0, 0, :, 16:].max() < 0.2  # nothing leaks across the edge; the speck fades
    assert refined[0, 0, 8, 24] < noisy[0, 0, 8, 24]


def test_pamr_checks_its_inputs():
    image, scores = _two_regions()
    with pytest.raises(ValueError, match="share"):
        pamr(image, scores[..., :8], iterations=1)
    assert torch.equal(pamr(image, scores, iterations=0), scores)
