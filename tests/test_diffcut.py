"""DiffCut's cut: against golden outputs of its released code, and against a float64 transcription
of its released algorithm on planted features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from oracles.diffcut_reference import (
    reference_affinity,
    reference_autosc,
    reference_cluster_qr,
    reference_labels,
    reference_leaves,
)

from dsseg.errors import ConfigError
from dsseg.methods.diffcut import (
    AutoSCPartition,
    DiffCutConfig,
    assign_cells,
    autosc_partition,
    cluster_qr,
    diffcut_labels,
    diffcut_partition,
    released_leaf_order,
)

GRID = (16, 16)
GOLDEN = Path(__file__).parent / "data" / "golden" / "diffcut"  # outputs of the released code (tests/data/README.md)


def planted_features(seed: int = 0, noise: float = 0.6, channels: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) features of four planted regions on a 16×16 grid (a disc and three bands) and the (N,) region ids."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: GRID[0], : GRID[1]]
    regions = np.where(cols < 5, 0, np.where(rows < 8, 1, 2))
    regions[(rows - 11) ** 2 + (cols - 10) ** 2 < 10] = 3
    centres = rng.normal(size=(4, channels))
    features = centres[regions.reshape(-1)] + noise * rng.normal(size=(regions.size, channels))
    return features.astype(np.float32), regions.reshape(-1)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label arrays group the elements alike (equal up to renaming)."""
    a, b = np.ravel(a).tolist(), np.ravel(b).tolist()
    pairs = set(zip(a, b))
    return len(pairs) == len(set(a)) == len(set(b))


def golden_cases() -> list[tuple[str, float]]:
    index = json.loads((GOLDEN / "index.json").read_text())
    return [(entry["file"], tau) for entry in index for tau in entry.get("taus", ())]


@pytest.mark.parametrize("name, tau", golden_cases())
def test_labels_are_the_released_codes_own(name, tau):
    golden = np.load(GOLDEN / name)
    expected = golden[f"labels128_tau{tau}"]
    labels, _ = diffcut_labels(torch.from_numpy(golden["features"]), (32, 32), DiffCutConfig(tau=tau))  # 128²
    assert labels.shape == (128, 128) and same_partition(labels.numpy(), expected)
    np.testing.assert_array_equal(labels.numpy(), expected)  # and numbered as the released assembly numbers them


@pytest.mark.parametrize("name", ["diffcut_a.npz", "diffcut_b.npz", "diffcut_c.npz"])
def test_the_float64_transcription_gives_the_released_codes_partitions(name):
    golden = np.load(GOLDEN / name)
    tau = max(t for n, t in golden_cases() if n == name)
    leaves = reference_leaves(golden["features"], tau)  # zero rows dropped below the root, as released
    labels = reference_labels(golden["features"], (32, 32), leaves, (128, 128))
    assert same_partition(labels, golden[f"labels128_tau{tau}"])


def test_leaves_are_numbered_by_the_released_assembly():
    # Masks in pre-order, upper side first, each weighted (largest sum so far) + 1: leaves 4 and 5
    # split from node 2 after leaf 3 took weight 1 at the root, so 5 sums to 2 and 3 to 1.
    assert released_leaf_order([4, 5, 3]) == [0, 2, 1]
    assert released_leaf_order([2, 6, 7]) == [0, 1, 2]  # 6: 1 (root), 7: 1 + 2
    assert released_leaf_order([1]) == [0]


# τ 0.7 and 0.8 cut past the planted regions into many leaves: the same leaves too. (Cutting on
# down to pairs of nodes, float32 and float64 eigenvectors may take the other side as the upper
# one, so the leaves are compared as partitions.)
@pytest.mark.parametrize("seed, tau", [(0, 0.5), (1, 0.5), (2, 0.2), (1, 0.7), (2, 0.8)])
def test_the_cut_is_the_released_algorithms(seed, tau):
    features, regions = planted_features(seed)
    hierarchy = diffcut_partition(torch.from_numpy(features), DiffCutConfig(tau=tau))
    reference = reference_leaves(features, tau)
    assert same_partition(hierarchy.assignment.numpy(), reference)
    if tau == 0.5:  # and, but for the nodes the zero-row rule moves, it finds what was planted
        kept = ~(reference_affinity(features, 10.0) == 0).any(axis=1)
        assert same_partition(hierarchy.assignment.numpy()[kept], regions[kept])


def test_cells_take_the_nearest_leaf_embedding_of_their_upsampled_feature():
    features, _ = planted_features(4, noise=0.9)
    labels, hierarchy = diffcut_labels(torch.from_numpy(features), GRID, DiffCutConfig(tau=0.5))
    expected = reference_labels(features, GRID, hierarchy.assignment.numpy(), (64, 64))
    assert labels.shape == (64, 64) and (labels.numpy() == expected).mean() > 0.999
    one = assign_cells(torch.from_numpy(features), GRID, torch.zeros(features.shape[0], dtype=torch.int64), (32, 32))
    assert one.shape == (32, 32) and int(one.max()) == 0  # a single leaf labels everything


def test_nodes_with_a_zero_affinity_are_dropped_below_the_root_as_released():
    features, _ = planted_features(7)
    weights = reference_affinity(features, 10.0)
    zero_rows = np.flatnonzero((weights == 0).any(axis=1))
    assert 2 <= len(zero_rows) <= 4  # the least similar pair (exactly 0 after min–max), maybe ties
    dropped = diffcut_partition(torch.from_numpy(features), DiffCutConfig(tau=0.5))
    kept = diffcut_partition(torch.from_numpy(features), DiffCutConfig(tau=0.5, drop_zero_rows=False))
    assert same_partition(dropped.assignment.numpy(), reference_leaves(features, 0.5, drop_zero_rows=True))
    assert same_partition(kept.assignment.numpy(), reference_leaves(features, 0.5, drop_zero_rows=False))
    assert dropped.num_leaves > kept.num_leaves  # here the rule changes the cut a lot (29 leaves, 5 without it)
    for node in zero_rows:  # in no cut below the root: from its root side on, lower sides only
        heap = dropped.heaps[int(dropped.assignment[node])]
        assert heap >> (heap.bit_length() - 2) in (2, 3) and heap & ((1 << (heap.bit_length() - 2)) - 1) == 0


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="^tau: must be > 0; got 0"):
        DiffCutConfig(tau=0)
    with pytest.raises(ConfigError, match="^pamr_iterations: must be ≥ 0"):
        DiffCutConfig(pamr_iterations=-1)
    with pytest.raises(ValueError, match="max_depth"):
        DiffCutConfig(max_depth=31)
    from dsseg.methods.ncut import NCutConfig

    with pytest.raises(ValueError, match="drop_zero_rows"):
        NCutConfig(drop_zero_rows=True)  # DiffCut's rule, for its graph only
    with pytest.raises(ConfigError, match="^eigensolver: must be one of"):
        NCutConfig(eigensolver="lapack")


def test_config_ids_tell_outputs_with_and_without_the_zero_row_rule_apart():
    from dsseg.job.config import config_id, id_params
    from dsseg.spec import MethodSpec

    assert id_params(DiffCutConfig())["drop_zero_rows"] is True  # in every id: earlier outputs, made without it, differ
    ids = {config_id("tiny", "float32", MethodSpec("diffcut", {"drop_zero_rows": drop})) for drop in (True, False)}
    assert len(ids) == 2


def test_features_are_the_named_layers_output(tiny):
    from dsseg.model.config import ExtractConfig
    from dsseg.model.extract import AttentionExtractor, feature_module, to_model_input

    module = feature_module(tiny.unet, "down:-1")
    assert module is tiny.unet.down_blocks[2].attentions[-1].transformer_blocks[-1].attn1
    assert feature_module(tiny.unet, "up:0") is tiny.unet.up_blocks[1].attentions[0].transformer_blocks[0].attn1
    config = ExtractConfig.from_params(
        {"image_size": 128, "noise": "noise", "timestep": 50, "feature_layer": "down:-1", "self_attention": False}
    )
    inputs = []
    handle = module.register_forward_pre_hook(lambda _m, args, kwargs: inputs.append((args, kwargs)), with_kwargs=True)
    rng = np.random.default_rng(0)
    images = to_model_input(rng.integers(0, 255, (2, 128, 128, 3), dtype=np.uint8), tiny.device, tiny.dtype)
    try:
        bundle = AttentionExtractor(tiny, config)(images)
    finally:
        handle.remove()
    args, kwargs = inputs[0]
    with torch.no_grad():
        direct = module(*args, **kwargs)
    assert bundle.features.shape == (2, 16, direct.shape[-1]) and bundle.feature_grid == (4, 4)
    torch.testing.assert_close(bundle.features, direct.float())
    assert bundle.self_attention == {}  # nothing else was captured


def test_diffcut_runs_end_to_end_and_checks_its_layer(tiny, bsds_image):
    from dsseg import segment_image
    from dsseg.errors import ConfigError
    from dsseg.spec import MethodSpec

    result = segment_image(bsds_image, "diffcut", tiny, image_size=256, tau=0.3, pamr_iterations=2)
    assert result.labels.shape == bsds_image.shape[:2] and result.num_segments >= 2
    assert result.parents is not None and len(result.parents) == result.num_segments
    resolved = MethodSpec("diffcut").resolved
    assert resolved.extraction.capture.feature_layer == "down:-1" and resolved.extraction.noising.timestep == 50
    assert resolved.extraction.preparation.image_size == 1024 and resolved.extraction.preparation.geometry == "squash"
    with pytest.raises(ConfigError, match="feature_layer: expects BLOCK:INDEX"):
        MethodSpec("diffcut", {"feature_layer": "middle"})
    with pytest.raises(ConfigError, match="holds|hold"):
        segment_image(bsds_image, "diffcut", tiny, image_size=128, feature_layer="mid:3")


def test_the_model_stage_writes_diffcut_rows_with_parents(tmp_path):
    from helpers import IMAGES, decoded

    from dsseg.job.config import SegmentJob
    from dsseg.job.model_stage import SegmentWorker
    from dsseg.job.write import encode_row
    from dsseg.spec import MethodSpec

    job = SegmentJob(
        input=str(IMAGES), output=str(tmp_path), backbone="tiny", device="cpu",
        configs=[MethodSpec("diffcut", {"image_size": 128, "tau": 0.4})],
    )  # fmt: skip
    rows = [encode_row(row) for row in SegmentWorker(job)(decoded(job, {"135069.jpg"})).to_pylist()]
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["method"] == "diffcut"
    segments = rows[0]["segments"]
    assert segments and all(segment["parent"] is not None for segment in segments if len(segments) > 1)


def test_configs_that_capture_what_their_method_does_not_read_are_refused(tiny):
    from dsseg import segment_attention
    from dsseg.errors import ConfigError
    from dsseg.model.config import ExtractConfig
    from dsseg.model.extract import AttentionExtractor
    from dsseg.spec import MethodSpec

    with pytest.raises(ConfigError, match="classes: diffcut reads features"):
        MethodSpec("diffcut", {"classes": ["horse"]})
    with pytest.raises(ConfigError, match="naming: diffcut"):
        MethodSpec("diffcut", {"naming": "caption"})
    with pytest.raises(ConfigError, match="feature_layer: diffcut reads"):
        MethodSpec("diffcut", {"feature_layer": None})
    with pytest.raises(ConfigError, match="self_attention: diffseg reads attention maps"):
        MethodSpec("diffseg", {"self_attention": False})
    with pytest.raises(ValueError, match="not attention maps: use segment_image"):
        segment_attention({8: np.eye(64, dtype=np.float32)}, "diffcut")
    with pytest.raises(ConfigError, match="hold 1 self-attention"):  # before any image: at construction
        AttentionExtractor(tiny, ExtractConfig.from_params({"image_size": 64, "feature_layer": "mid:3"}))


# AutoSC (tau="auto"): the released diffcut/autosc.py, against its float64 transcription.


@pytest.mark.parametrize("seed, noise", [(0, 0.6), (1, 0.6), (3, 1.0), (8, 1.2), (1, 1.0)])
def test_autosc_is_the_released_algorithm(seed, noise):
    # Clear clusters (k = 4), k chosen at α 10, a wrong k (7), and the eigengap's known failure on
    # noisy features: the last gap, k = N − 1 = 255 at α 15. The same k, α and partition each time.
    features, _ = planted_features(seed, noise=noise)
    partition = autosc_partition(torch.from_numpy(features))
    labels, clusters, alpha = reference_autosc(features)
    assert (partition.clusters, partition.alpha) == (clusters, alpha)
    assert same_partition(partition.assignment.numpy(), labels)
    np.testing.assert_array_equal(np.unique(partition.assignment.numpy()), np.arange(labels.max() + 1))


def test_autosc_clusters_the_last_alphas_eigenvectors_as_released():
    # Here α 10 has the largest gap (k = 4); the eigenvectors of α 15 cut the planted regions
    # otherwise than α 10's, which recover them: the released code takes α 15's ("last").
    features, regions = planted_features(7, noise=1.0)
    last = autosc_partition(torch.from_numpy(features))
    chosen = autosc_partition(torch.from_numpy(features), "chosen")
    assert (last.clusters, last.alpha) == (chosen.clusters, chosen.alpha) == (4, 10.0)
    assert same_partition(last.assignment.numpy(), reference_autosc(features, "last")[0])
    assert same_partition(chosen.assignment.numpy(), reference_autosc(features, "chosen")[0])
    assert same_partition(chosen.assignment.numpy(), regions)
    assert not same_partition(last.assignment.numpy(), regions)


@pytest.mark.parametrize("name", ["diffcut_a.npz", "diffcut_b.npz", "diffcut_c.npz"])
def test_autosc_finds_the_number_of_planted_regions(name):
    golden = np.load(GOLDEN / name)  # 1024 nodes (a 1024² input's 32² grid), 5, 9 and 7 regions
    truth = golden["truth"].reshape(-1)
    partition = autosc_partition(torch.from_numpy(golden["features"]))
    assert partition.clusters == len(np.unique(truth)) and same_partition(partition.assignment.numpy(), truth)
    assert same_partition(partition.assignment.numpy(), reference_autosc(golden["features"])[0])
    labels, found = diffcut_labels(torch.from_numpy(golden["features"]), (32, 32), DiffCutConfig(tau="auto"))
    assert isinstance(found, AutoSCPartition) and labels.shape == (128, 128)
    expected = reference_labels(golden["features"], (32, 32), found.assignment.numpy(), (128, 128))
    assert (labels.numpy() == expected).mean() > 0.999  # assigned as the cut's leaves are


def test_cluster_qr_is_scikit_learns():
    from sklearn.cluster._spectral import cluster_qr as sklearn_cluster_qr

    rng = np.random.default_rng(0)
    for n, k, dtype in ((300, 5, np.float64), (1024, 9, np.float32), (50, 1, np.float64), (64, 12, np.float32)):
        vectors = rng.normal(size=(n, k)).astype(dtype)
        expected = sklearn_cluster_qr(vectors)
        np.testing.assert_array_equal(cluster_qr(vectors), expected)
        np.testing.assert_array_equal(reference_cluster_qr(vectors), expected)  # and the oracle's transcription
    features, regions = planted_features(0)
    labels = cluster_qr(np.eye(4)[regions] + 0.05 * rng.normal(size=(len(regions), 4)))
    assert same_partition(labels, regions)  # near-indicator vectors: their clusters


def test_autosc_settings_are_checked():
    from dsseg.job.config import config_id, id_params
    from dsseg.spec import MethodSpec

    with pytest.raises(ConfigError, match="^tau: must be a number > 0 or 'auto'"):
        DiffCutConfig(tau="foo")
    with pytest.raises(ConfigError, match="^tau: must be a number"):
        MethodSpec("diffcut", {"tau": "foo"})  # named by the config, not the generic type check
    with pytest.raises(ConfigError, match="^tau: must be a number"):
        DiffCutConfig(tau=True)
    with pytest.raises(ConfigError, match="^autosc_vectors: must be one of"):
        DiffCutConfig(tau="auto", autosc_vectors="first")
    with pytest.raises(ConfigError, match="^autosc_vectors: is read by AutoSC only"):
        DiffCutConfig(autosc_vectors="chosen")
    for name, value in (("alpha", 5.0), ("split_candidates", 50), ("max_depth", 8), ("drop_zero_rows", False)):
        with pytest.raises(ConfigError, match=f"^{name}: belongs to the recursive cut"):
            DiffCutConfig(tau="auto", **{name: value})
    with pytest.raises(ValueError, match="runs AutoSC"):
        DiffCutConfig(tau="auto").cut_config()
    spec = MethodSpec("diffcut", {"tau": "auto"})
    assert spec.resolved.params.autosc and "autosc_vectors" not in id_params(DiffCutConfig())  # earlier ids hold
    ids = {config_id("tiny", "float32", MethodSpec("diffcut", params)) for params in (
        {}, {"tau": "auto"}, {"tau": "auto", "autosc_vectors": "chosen"})}  # fmt: skip
    assert len(ids) == 3


def test_diffcut_autosc_runs_end_to_end(tiny, bsds_image):
    from dsseg import segment_image

    result = segment_image(bsds_image, "diffcut", tiny, image_size=256, tau="auto", pamr_iterations=2)
    assert result.labels.shape == bsds_image.shape[:2] and result.num_segments >= 2
    assert result.parents is None  # flat segments
