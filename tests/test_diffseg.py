import numpy as np
import pytest
import torch
from oracles.diffseg_reference import kl_to_all, reference_diffseg, sampling_grid

from dsseg.api import segment_attention
from dsseg.benchmark.planted import pixel_regions, planted_attention, planted_regions
from dsseg.evaluation.metrics import adjusted_rand_index, relabelled_agreement
from dsseg.methods.diffseg import DiffSegConfig, anchor_indices, merge_proposals, symmetric_kl


@pytest.fixture(scope="module")
def planted():
    regions = planted_regions(64)
    return regions, planted_attention(regions)


def test_recovers_planted_regions_from_all_four_resolutions(planted):
    regions, attention = planted
    labels = segment_attention(attention, method="diffseg")
    assert labels.shape == (512, 512) and labels.dtype == np.int32
    truth = pixel_regions(regions)
    assert adjusted_rand_index(labels, truth) >= 0.9


def test_same_label_map_as_the_official_algorithm_on_a_small_latent():
    regions = planted_regions(32)
    attention = planted_attention(regions, resolutions=(32, 16, 8, 4), noise=0.6, seed=3)
    ours = segment_attention(attention, output_size=(256, 256), anchor_spacing=4)
    reference = reference_diffseg(attention, num_points=8)
    assert len(np.unique(ours)) == len(np.unique(reference)) >= 4
    assert relabelled_agreement(ours, reference) >= 0.999


def test_same_label_map_as_the_official_algorithm_on_real_tiny_unet_attention(tiny, bsds_image):
    from dsseg.io.images import prepare_image
    from dsseg.model.config import ExtractConfig
    from dsseg.model.extract import AttentionExtractor, to_model_input

    pixels, _ = prepare_image(bsds_image, 256, "center_crop")
    bundle = AttentionExtractor(tiny, ExtractConfig.from_params({"image_size": 256}))(
        to_model_input(pixels[None], tiny.device, tiny.dtype)
    )
    attention = {g[0]: a[0].numpy() for g, a in bundle.self_attention.items()}
    for threshold in (0.3, 0.5):
        ours = segment_attention(attention, output_size=(256, 256), kl_threshold=threshold)
        reference = reference_diffseg(attention, kl_threshold=threshold, num_points=8)
        assert len(np.unique(ours)) == len(np.unique(reference)) >= 5
        assert relabelled_agreement(ours, reference) >= 0.995


@pytest.mark.slow
def test_same_label_map_as_the_official_algorithm_at_full_size(planted):
    _, attention = planted
    noisy = planted_attention(planted_regions(64), noise=0.8, seed=7)
    for case in (attention, noisy):
        ours = segment_attention(case)
        reference = reference_diffseg(case)
        assert relabelled_agreement(ours, reference) >= 0.999


def test_anchor_grid_is_the_official_sampling_grid():
    anchors = anchor_indices((64, 64), 4)
    rows, cols = anchors // 64, anchors % 64
    assert len(anchors) == 256
    assert sorted(set(rows.tolist())) == list(range(1, 62, 4)) == sorted(set(cols.tolist()))
    official = sampling_grid(64, 16)
    assert np.array_equal(torch.stack([rows, cols], -1).numpy(), official)
    assert len(anchor_indices((96, 96), 4)) == 24 * 24
    assert len(anchor_indices((64, 40), 4)) == 16 * 10


def test_symmetric_kl_matches_direct_formula_and_survives_zeros():
    rng = np.random.default_rng(0)
    p = torch.as_tensor(rng.dirichlet(np.ones(36), size=5), dtype=torch.float32)
    p[0, :10] = 0.0  # exact zeros: the official float16 code gives NaN here
    p[0] /= p[0].sum()
    ours = symmetric_kl(p, p)
    direct = np.stack(
        [
            kl_to_all(row.reshape(6, 6).numpy().astype(np.float64), p.reshape(5, 6, 6).numpy().astype(np.float64))
            for row in p
        ]
    )
    assert torch.isfinite(ours).all()
    np.testing.assert_allclose(ours.numpy(), direct, rtol=1e-4, atol=1e-4)
    assert torch.allclose(torch.diagonal(ours), torch.zeros(5), atol=1e-5)


def test_greedy_merge_includes_already_absorbed_proposals():
    """0≈1 and 1≈2 but 0≉2: proposal 0 absorbs 1; proposal 2 still merges with 1 (official order)."""
    base = torch.tensor([[0.70, 0.20, 0.10], [0.45, 0.45, 0.10], [0.20, 0.70, 0.10]])
    kl = symmetric_kl(base, base)
    threshold = float((kl[0, 1] + kl[0, 2]) / 2)
    assert kl[0, 1] < threshold < kl[0, 2] and kl[1, 2] < threshold
    merged = merge_proposals(base, threshold)
    torch.testing.assert_close(merged, torch.stack([base[:2].mean(0), base[1:].mean(0)]))


def test_kmeans_refinement_is_sklearns_kmeans_from_the_merged_proposals():
    """The official refinement: ``KMeans(n_clusters=K, init=<the merged proposals>, n_init=1).fit(<the
    aggregated rows>)``, then each cluster's mean row (google/diffseg, ``diffseg/segmentor.py``). Noisy
    planted attention where Lloyd's steps move about 200 of the 1,024 cells, for about 16 steps."""
    from sklearn.cluster import KMeans

    from dsseg.api import bundle_from_attention
    from dsseg.methods.aggregate import aggregate_self_attention
    from dsseg.methods.diffseg import diffseg_proposals
    from dsseg.methods.upsample import upsample_argmax

    attention = planted_attention(planted_regions(32), resolutions=(32, 16, 8, 4), noise=1.5, seed=3)
    aggregated, grid = aggregate_self_attention(bundle_from_attention(attention).self_attention)
    rows = aggregated[0].float()
    params = {"kl_threshold": 0.8, "anchor_spacing": 2}
    merged = diffseg_proposals(rows, grid, DiffSegConfig(**params))
    refined = diffseg_proposals(rows, grid, DiffSegConfig(**params, refine=True))

    data = rows.double().numpy()
    kmeans = KMeans(n_clusters=len(merged), init=merged.double().numpy(), n_init=1).fit(data)
    means = np.stack([data[kmeans.labels_ == k].mean(0) for k in range(len(merged))])
    first = (np.square(data[:, None, :] - merged.double().numpy()[None]).sum(-1)).argmin(-1)  # before any step
    assert kmeans.n_iter_ > 5 and (first != kmeans.labels_).sum() > 100  # the refinement has work to do
    assert refined.shape == merged.shape and len(set(kmeans.labels_)) == len(merged)  # no cluster emptied
    np.testing.assert_allclose(refined.numpy(), means, atol=1e-6)

    labels = segment_attention(attention, output_size=(256, 256), refine=True, **params)
    expected = upsample_argmax(torch.as_tensor(means, dtype=torch.float32).reshape(-1, *grid), 8).numpy()
    unrefined = segment_attention(attention, output_size=(256, 256), **params)
    assert relabelled_agreement(labels, expected) >= 0.999 and relabelled_agreement(unrefined, expected) < 0.9


def test_a_threshold_above_every_distance_merges_everything(planted):
    _, attention = planted
    assert len(np.unique(segment_attention(attention))) == 5
    assert len(np.unique(segment_attention(attention, kl_threshold=50.0))) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kl_threshold=(1.0, 1.0)), "1 or 3 values"),
        (dict(kl_threshold=-1.0), "^kl_threshold: must be > 0; got -1.0"),
        (dict(iterations=0), "iterations"),
        (dict(anchor_spacing=0), "anchor_spacing"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiffSegConfig(**kwargs)
    assert DiffSegConfig(kl_threshold=[0.9, 1.0, 1.1]).kl_threshold == (0.9, 1.0, 1.1)
