import numpy as np
import pytest
import torch
from oracles.diffseg_reference import reference_aggregate

from dsseg.methods.aggregate import aggregate_self_attention, select_levels


def _random_attention(rng, sizes, batch=1):
    out = {}
    for r in sizes:
        logits = torch.as_tensor(rng.standard_normal((batch, r * r, r * r)) * 2, dtype=torch.float32)
        out[(r, r)] = logits.softmax(-1)
    return out


def test_query_axis_tiled_and_key_axis_bilinear_renormalised():
    """A 2×2 level whose query (0, 0) attends only to key (0, 0), aggregated onto 4×4."""
    coarse = torch.full((1, 4, 4), 0.25)
    coarse[0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    fine = torch.full((1, 16, 16), 1 / 16)
    out, grid = aggregate_self_attention({(4, 4): fine, (2, 2): coarse}, weights=(0.0, 1.0))
    assert grid == (4, 4)
    # Half-pixel bilinear 2 → 4 along each axis: weights of source 0 are 1, 3/4, 1/4, 0.
    profile = torch.tensor([1.0, 0.75, 0.25, 0.0])
    expected = torch.outer(profile, profile).reshape(-1) / 4.0  # sum of the outer product is 4
    for query in (0, 1, 4, 5):  # the 2×2 block of fine queries under coarse query (0, 0)
        torch.testing.assert_close(out[0, query], expected)
    torch.testing.assert_close(out[0, 2], torch.full((16,), 1 / 16))  # uniform stays uniform
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 16))


def test_rows_sum_to_one_and_default_weights_are_proportional_to_size():
    rng = np.random.default_rng(0)
    attention = _random_attention(rng, (16, 8, 4, 2), batch=2)
    levels = select_levels(list(attention))
    assert [round(w * 30, 6) for w in levels.values()] == [16, 8, 4, 2]
    out, grid = aggregate_self_attention(attention)
    assert out.shape == (2, 256, 256) and grid == (16, 16)
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 256))


def test_matches_the_float64_transcription_of_the_official_aggregation():
    rng = np.random.default_rng(1)
    attention = _random_attention(rng, (16, 8, 4, 2))
    ours, _ = aggregate_self_attention(attention)
    reference = reference_aggregate({g[0]: a[0].numpy() for g, a in attention.items()})
    np.testing.assert_allclose(ours[0].numpy(), reference.reshape(256, 256), atol=1e-6, rtol=1e-4)


def test_resolution_subset_and_custom_weights():
    rng = np.random.default_rng(2)
    attention = _random_attention(rng, (8, 4, 2))
    only_coarse, grid = aggregate_self_attention(attention, resolutions=(4,))
    assert grid == (4, 4) and only_coarse.shape == (1, 16, 16)
    weighted, _ = aggregate_self_attention(attention, resolutions=(8, 2), weights=(3.0, 1.0))
    fine_only, _ = aggregate_self_attention(attention, resolutions=(8,))
    coarse_only, _ = aggregate_self_attention(attention, resolutions=(2,))
    assert coarse_only.shape == (1, 4, 4)
    coarse_on_fine, _ = aggregate_self_attention(attention, resolutions=(8, 2), weights={8: 0.0, 2: 1.0})
    torch.testing.assert_close(weighted, 0.75 * fine_only + 0.25 * coarse_on_fine)
    with pytest.raises(ValueError, match="not available"):
        aggregate_self_attention(attention, resolutions=(64,))
    with pytest.raises(ValueError, match="weights given"):
        aggregate_self_attention(attention, weights=(1.0,))
