from dataclasses import replace

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from oracles.ncut_reference import reference_ncut, reference_ncut_cost

import dsseg
from dsseg.api import bundle_from_attention
from dsseg.benchmark.planted import pixel_regions, planted_attention, planted_regions, voronoi_regions
from dsseg.evaluation.metrics import adjusted_rand_index, relabelled_agreement
from dsseg.methods import get_method, spectral
from dsseg.methods.aggregate import aggregate_self_attention
from dsseg.methods.ncut import NCutConfig, cosine_scores, cut_hierarchy, manc_threshold, ncut_partition
from dsseg.methods.spectral import (
    DENSE_EIGEN_LIMIT,
    FEATURE_DENSE_EIGEN_LIMIT,
    PREFIX_BLOCK,
    DenseGraph,
    FeatureGraph,
    best_split,
    deflated_lazy_walk,
    fiedler,
    fiedler_vector,
    prefix_norms,
    random_walk_vector,
)
from dsseg.methods.upsample import upsample_argmax_index
from dsseg.spec import MethodSpec


def clustered_features(n: int, clusters: int, seed: int = 0, spread: float = 0.3) -> torch.Tensor:
    """(n, 32) non-negative features in ``clusters`` noisy groups."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(clusters, 32, generator=generator)
    members = torch.arange(n) % clusters
    return (centres[members] + spread * torch.rand(n, 32, generator=generator)).clamp_min(0)


@pytest.mark.parametrize("count", [3, 8, 12])
def test_manc_recovers_planted_regions_with_no_threshold_and_beats_diffseg(count):
    regions = voronoi_regions(32, count, seed=count)  # a 32² latent keeps the test quick; 64² behaves alike
    # noisy maps: every same-region pair is far apart in KL, so DiffSeg's fixed τ stops merging
    attention = planted_attention(
        regions, resolutions=(32, 16, 8, 4), affinity=6.0, locality=0.3, noise=2.5, seed=count
    )
    truth = pixel_regions(regions)
    ours = adjusted_rand_index(dsseg.segment_attention(attention, method="ncut", output_size=(256, 256)), truth)
    diffseg = adjusted_rand_index(dsseg.segment_attention(attention, method="diffseg", output_size=(256, 256)), truth)
    assert ours >= 0.9
    assert ours > diffseg


def test_default_recovers_local_planted_regions():
    regions = planted_regions(64)
    labels = dsseg.segment_attention(planted_attention(regions), method="ncut")
    assert labels.shape == (512, 512) and labels.dtype == np.int32
    assert len(np.unique(labels)) == 5
    assert adjusted_rand_index(labels, pixel_regions(regions)) >= 0.95


def test_higher_power_never_adds_segments_on_a_nested_hierarchy():
    regions = voronoi_regions(48, 12, seed=4)  # 48² latent cells: 12 regions of ~190 cells, quicker than 64²
    groups = np.arange(12) % 3  # three groups of four regions each
    attention = planted_attention(
        regions,
        resolutions=(48, 24, 12),
        affinity=2.0,
        group_affinity=5.0,
        locality=0.3,
        noise=0.5,
        seed=1,
        groups=groups,
    )
    counts, coarse = [], []
    for power in (1, 2, 3, 4):
        labels = dsseg.segment_attention(attention, method="ncut", power=power, output_size=(384, 384))
        counts.append(len(np.unique(labels)))
        coarse.append(adjusted_rand_index(labels, pixel_regions(groups[regions])))
        if power == 1:
            assert adjusted_rand_index(labels, pixel_regions(regions)) >= 0.9
    assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0]
    assert coarse[-1] > coarse[0]


@pytest.mark.parametrize(
    "params",
    [
        {"graph": "random_walk", "stopping": "threshold", "threshold": 0.3},
        {"graph": "random_walk"},
        {"graph": "cosine", "stopping": "threshold", "threshold": 0.5},
        {"graph": "dot", "stopping": "manc_ncut", "split_candidates": 100},
        {"graph": "dot", "upsampling": "nearest"},
    ],
)
def test_random_walk_and_adjacency_modes_recover_regions(params):
    regions = voronoi_regions(32, 5, seed=5)
    attention = planted_attention(regions, resolutions=(32, 16, 8), affinity=6.0, locality=0.3, noise=0.5, seed=5)
    labels = dsseg.segment_attention(attention, method="ncut", output_size=(256, 256), **params)
    assert adjusted_rand_index(labels, pixel_regions(regions)) >= 0.9


def test_diffcut_variant_separates_regions():
    regions = voronoi_regions(32, 4, seed=2)
    attention = planted_attention(regions, resolutions=(32, 16, 8), affinity=6.0, locality=0.3, noise=0.5, seed=2)
    labels = dsseg.segment_attention(
        attention,
        method="ncut",
        output_size=(256, 256),
        graph="diffcut",
        stopping="threshold",
        threshold=0.2,
        split_candidates=100,
    )
    assert adjusted_rand_index(labels, pixel_regions(regions)) >= 0.9


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"power": 2},
        {"stopping": "manc_mincut"},
        {"graph": "cosine", "stopping": "threshold", "threshold": 0.5},
        {"graph": "random_walk", "stopping": "threshold", "threshold": 0.3},
    ],
)
def test_same_partition_as_the_float64_reference(params):
    regions = voronoi_regions(32, 7, seed=7)
    attention = planted_attention(regions, resolutions=(32, 16, 8), noise=1.5, seed=3)
    transition = aggregate_self_attention(bundle_from_attention(attention).self_attention)[0][0]
    config = NCutConfig(**params)
    ours = ncut_partition(transition, config).assignment.numpy()
    reference = reference_ncut(transition.numpy(), config)
    assert ours.max() == reference.max() >= 6
    # the random walk's eigenvector comes from a capped power iteration: a few cells may differ
    assert relabelled_agreement(ours, reference) >= (0.99 if config.graph == "random_walk" else 1.0)


@pytest.mark.parametrize("n", [FEATURE_DENSE_EIGEN_LIMIT, 3 * DENSE_EIGEN_LIMIT])
def test_fiedler_vector_solves_the_generalised_eigenproblem(n):
    graph = FeatureGraph(clustered_features(n, 3, seed=n))
    x, eigenvalue = fiedler_vector(graph, tolerance=1e-6)
    weights = graph.dense().double()
    degrees = weights.sum(1)
    laplacian = torch.diag(degrees) - weights
    x = x.double()
    residual = laplacian @ x - eigenvalue * degrees * x
    assert float(residual.norm() / (degrees * x).norm()) < 1e-4
    expected = scipy.linalg.eigh(laplacian.numpy(), torch.diag(degrees).numpy(), eigvals_only=True)[1]
    assert eigenvalue == pytest.approx(expected, rel=1e-3, abs=1e-6)


def test_random_walk_vector_is_an_eigenvector_of_the_deflated_walk():
    features = clustered_features(300, 2, seed=1)
    weights = features @ features.T
    weights = weights * (1 + 0.2 * torch.rand(300, 300, generator=torch.Generator().manual_seed(0)))  # not symmetric
    graph = DenseGraph(weights / weights.sum(1, keepdim=True), directed=True)
    x, mu = random_walk_vector(graph, max_iterations=5000, tolerance=1e-7)
    residual = deflated_lazy_walk(graph, x, graph.degrees()) - 0.5 * (1 + mu) * x
    assert float(residual.norm()) < 1e-4
    # the walk's own eigen-equation holds after removing the constant shift of the deflation
    walk = (graph.weights / graph.degrees()[:, None]).double().numpy()
    eigenvalues = np.linalg.eigvals(walk)
    second = sorted(eigenvalues.real, reverse=True)[1]
    assert mu == pytest.approx(second, abs=1e-4)


@pytest.mark.parametrize("kind", ["features", "symmetric", "directed"])
def test_chosen_split_cost_equals_the_definition_and_is_the_minimum(kind):
    features = clustered_features(150, 3, seed=2)
    if kind == "features":
        graph = FeatureGraph(features)
    else:
        weights = features @ features.T
        if kind == "directed":
            weights = weights * torch.rand(150, 150, generator=torch.Generator().manual_seed(1))
        graph = DenseGraph(weights, directed=kind == "directed")
    x = torch.randn(150, generator=torch.Generator().manual_seed(3))
    split = best_split(graph, x, min_size=5)
    weights = graph.dense().double().numpy()

    def direct_cost(right: torch.Tensor) -> float:
        return reference_ncut_cost(weights, right.numpy())[0]

    assert split.ncut == pytest.approx(direct_cost(split.right), rel=1e-6)
    order = torch.argsort(x)
    direct = [direct_cost(torch.isin(torch.arange(150), order[m:])) for m in range(5, 146)]
    assert split.ncut == pytest.approx(min(direct), rel=1e-6)
    assert 5 <= int(split.right.sum()) <= 145
    limited = best_split(graph, x, min_size=5, candidates=7)
    assert limited.ncut >= split.ncut - 1e-9
    assert best_split(graph, x, min_size=76) is None


@pytest.mark.parametrize("n", [5, PREFIX_BLOCK, 37, 160])
def test_prefix_norms_and_block_sums_equal_the_direct_sums(n):
    rows = torch.rand(n, 24, generator=torch.Generator().manual_seed(n))
    norms, running = prefix_norms(rows)
    direct = rows.double().cumsum(0)
    assert torch.allclose(norms, (direct**2).sum(1), rtol=1e-6)
    block_ends = [min((b + 1) * PREFIX_BLOCK, n) - 1 for b in range(running.shape[1])]
    assert torch.allclose(running.T, direct[block_ends], rtol=1e-6)


def split_of(graph: FeatureGraph):
    """The Fiedler split of ``graph`` with its warm-start hint, as ``two_way_split`` makes it."""
    solution = fiedler(graph)
    return replace(best_split(graph, solution.vector, min_size=8), hint=solution.next_vector)


def test_children_are_the_sorted_rows_of_each_side_and_pending_sides_survive_deeper_sorts():
    features = clustered_features(600, 4, seed=4)
    graph = FeatureGraph(features)
    split = split_of(graph)
    lower_nodes, lower, upper_nodes, upper = graph.children(split)
    assert torch.equal(upper_nodes.sort().values, torch.nonzero(split.right)[:, 0])
    assert torch.equal(torch.cat([lower_nodes, upper_nodes]).sort().values, torch.arange(600))
    for nodes, child in ((lower_nodes, lower), (upper_nodes, upper)):
        assert torch.equal(child.features, features[nodes])
        weights = features[nodes].double() @ features[nodes].double().T
        assert torch.allclose(child.degrees().double(), weights.sum(1), rtol=1e-5)
        assert torch.equal(child.start_values(), graph.start_values()[nodes])
        assert torch.equal(child.hint, split.hint[nodes])
    # the two sides are adjacent rows of one buffer: views, not copies
    assert upper.features.data_ptr() == lower.features.data_ptr() + lower.size * features.shape[1] * 4
    # sorting the lower side and its descendants never touches the pending upper side's rows
    sub = lower
    while sub.size > 2 * FEATURE_DENSE_EIGEN_LIMIT:
        _, sub, _, _ = sub.children(split_of(sub))
    assert torch.equal(upper.features, features[upper_nodes])
    with pytest.raises(ValueError, match="children"):
        FeatureGraph(features).children(split)


@pytest.mark.parametrize("seed, count", [(1, 8), (2, 12)])
def test_warm_starts_give_the_same_partition_with_fewer_mat_vecs(seed, count, monkeypatch):
    attention = planted_attention(voronoi_regions(32, count, seed=seed), resolutions=(32, 16, 8), noise=1.5, seed=seed)
    transition = aggregate_self_attention(bundle_from_attention(attention).self_attention)[0][0]
    mat_vecs = {}
    plain = FeatureGraph.matmul

    def counted(graph, x):
        mat_vecs[run] += 1
        return plain(graph, x)

    monkeypatch.setattr(FeatureGraph, "matmul", counted)
    run, mat_vecs["warm"] = "warm", 0
    warm = ncut_partition(transition, NCutConfig()).assignment
    monkeypatch.setattr(spectral, "warm_start", lambda graph, degrees: graph.start_values())
    run, mat_vecs["cold"] = "cold", 0
    cold = ncut_partition(transition, NCutConfig()).assignment
    assert torch.equal(warm, cold) and int(warm.max()) + 1 == count
    assert mat_vecs["warm"] < 0.9 * mat_vecs["cold"]


def test_reused_sort_buffers_do_not_carry_results_between_images():
    first = planted_attention(voronoi_regions(32, 6, seed=1), resolutions=(32, 16, 8), noise=1.0, seed=1)
    second = planted_attention(voronoi_regions(32, 9, seed=2), resolutions=(32, 16, 8), noise=1.0, seed=2)
    transitions = [aggregate_self_attention(bundle_from_attention(a).self_attention)[0][0] for a in (first, second)]
    alone = ncut_partition(transitions[0], NCutConfig()).assignment
    ncut_partition(transitions[1], NCutConfig())  # same size: the same thread's buffers are reused
    again = ncut_partition(transitions[0], NCutConfig()).assignment
    assert torch.equal(alone, again) and int(alone.max()) >= 3


def test_edge_statistics_and_manc_threshold():
    features = clustered_features(80, 2)
    dense = DenseGraph(features @ features.T)
    total, edges = FeatureGraph(features).edge_stats()
    assert (total, edges) == (pytest.approx(dense.edge_stats()[0], rel=1e-5), dense.edge_stats()[1])
    assert edges == 80 * 79 // 2
    assert manc_threshold(80, total, edges) == pytest.approx(total / 79)
    sparse = features.clone()
    sparse[:40, :16] = 0
    sparse[40:, 16:] = 0  # two halves with disjoint supports: no edges between them
    assert FeatureGraph(sparse).edge_stats()[1] == 2 * (40 * 39 // 2)


def test_cosine_upsampling_is_the_per_pixel_cosine_argmax():
    grid, factor = (6, 5), 4
    transition = torch.rand(30, 30, generator=torch.Generator().manual_seed(0)) ** 4
    transition = transition / transition.sum(1, keepdim=True)
    assignment = torch.arange(30) % 4
    fast = upsample_argmax_index(cosine_scores(transition, assignment, 4).reshape(4, *grid), factor)
    # brute force: every pixel's key distribution, bilinearly interpolated over the query grid
    per_pixel = F.interpolate(
        transition.T.reshape(1, 30, *grid), scale_factor=factor, mode="bilinear", align_corners=False
    )
    per_pixel = per_pixel[0].reshape(30, -1).T  # (pixels, keys)
    means = torch.stack([transition[assignment == s].mean(0) for s in range(4)])
    cosine = F.normalize(per_pixel, dim=1) @ F.normalize(means, dim=1).T
    assert torch.equal(fast.reshape(-1), cosine.argmax(1))


def test_hierarchy_parents_cut_at_any_depth():
    regions = planted_regions(32)
    bundle = bundle_from_attention(planted_attention(regions, resolutions=(32, 16, 8)))
    method_result = get_method("ncut").segment(bundle, NCutConfig(), None)[0]
    labels, parents = method_result.labels.numpy(), method_result.parents
    assert len(parents) == labels.max() + 1 == 5
    assert all(p is not None and p >= 1 for p in parents)
    assert cut_hierarchy(labels, parents, 0).max() == 0
    assert cut_hierarchy(labels, parents, 1).max() == 1
    assert np.array_equal(cut_hierarchy(labels, parents, 30), labels)
    # depth-1 halves are unions of whole leaves, and every parent id is an ancestor chain from 1
    halves = cut_hierarchy(labels, parents, 1)
    for leaf in range(5):
        assert len(np.unique(halves[labels == leaf])) == 1
    counts = [cut_hierarchy(labels, parents, d).max() + 1 for d in range(6)]
    assert counts == sorted(counts) and counts[-1] == 5


def test_same_input_same_output():
    attention = planted_attention(planted_regions(32), resolutions=(32, 16, 8), noise=1.0, seed=9)
    first = dsseg.segment_attention(attention, method="ncut", output_size=(256, 256))
    second = dsseg.segment_attention(attention, method="ncut", output_size=(256, 256))
    assert np.array_equal(first, second) and len(np.unique(first)) > 1


def test_config_errors_say_what_to_do():
    with pytest.raises(ValueError, match="^threshold: stopping='threshold' needs a threshold > 0"):
        NCutConfig(stopping="threshold")
    with pytest.raises(ValueError, match="only used with stopping='threshold'"):
        NCutConfig(threshold=0.4)
    with pytest.raises(ValueError, match="^graph: must be one of"):
        NCutConfig(graph="knn")
    with pytest.raises(ValueError, match="max_depth"):
        NCutConfig(max_depth=31)
    attention = planted_attention(planted_regions(16), resolutions=(16, 8))
    with pytest.raises(ValueError, match="not available"):
        dsseg.segment_attention(attention, method="ncut", resolutions=(64, 32))


def test_segment_image_with_ncut_fills_parents(tiny, bsds_image):
    resolved = MethodSpec("ncut", {"image_size": 256}).resolved
    assert (
        resolved.extraction.noising.noise == "ddim_inversion"
        and resolved.extraction.noising.inversion_steps == 10
        and resolved.params == NCutConfig()
    )
    result = dsseg.segment_image(bsds_image, method="ncut", backbone=tiny, image_size=256)
    assert result.method == "ncut" and result.labels.shape == (321, 481)
    assert result.num_segments > 1 and len(result.parents) == result.num_segments
    segments = result.to_rles()
    assert all(isinstance(s["parent"], int) for s in segments)
    assert {"invert", "unet", "aggregate", "segment"} <= set(result.timings_ms)


def test_benchmark_times_ncut_against_diffseg_on_the_same_attention(tiny):
    from helpers import IMAGES

    from dsseg.benchmark.latency import versus_method
    from dsseg.segmenter import Segmenter

    data = (IMAGES / "135069.jpg").read_bytes()
    report = versus_method(
        Segmenter(tiny, "ncut", {"noise": "none", "timestep": 300, "image_size": 256}), data, "diffseg", repeats=1
    )
    assert report["methods"] == ["ncut", "diffseg"]
    assert report["segments"]["ncut"] > 1 and report["segments"]["diffseg"] >= 1
    # the ratio of the unrounded medians; the report rounds each median to 0.1 ms
    assert report["ratio"] > 0
    assert report["ratio"] == pytest.approx(report["median_ms"]["ncut"] / report["median_ms"]["diffseg"], rel=0.05)


def test_every_split_costs_at_least_the_fiedler_eigenvalue():
    features = clustered_features(200, 3, seed=6)
    graph = FeatureGraph(features)
    eigenvalue = fiedler(graph, tolerance=1e-7).value
    weights = graph.dense().double().numpy()
    generator = torch.Generator().manual_seed(0)
    costs = [
        reference_ncut_cost(weights, (torch.rand(200, generator=generator) < p).numpy())[0] for p in (0.1, 0.5, 0.9)
    ]
    costs.append(best_split(graph, fiedler(graph).vector, min_size=1).ncut)
    assert min(costs) >= eigenvalue - 1e-6


def test_splits_the_spectral_bound_refuses_are_never_formed_and_change_nothing(monkeypatch):
    from dsseg.methods import ncut

    attention = planted_attention(voronoi_regions(32, 8, seed=1), resolutions=(32, 16, 8), noise=1.5, seed=1)
    transition = aggregate_self_attention(bundle_from_attention(attention).self_attention)[0][0]
    formed = []
    plain = FeatureGraph.prefix_association
    monkeypatch.setattr(FeatureGraph, "prefix_association", lambda g, order: formed.append(g.size) or plain(g, order))
    bounded = ncut_partition(transition, NCutConfig()).assignment
    with_bound = len(formed)
    monkeypatch.setattr(ncut, "SPECTRAL_BOUND_MARGIN", float("inf"))  # the bound never refuses
    formed.clear()
    unbounded = ncut_partition(transition, NCutConfig()).assignment
    assert torch.equal(bounded, unbounded) and int(bounded.max()) + 1 == 8
    assert with_bound < len(formed)
