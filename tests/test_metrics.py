import numpy as np
import pytest

from dsseg.evaluation.metrics import adjusted_rand_index, contingency, relabelled_agreement


def test_identical_partitions_under_relabelling_score_one():
    a = np.array([[0, 0, 1], [2, 2, 1]])
    b = np.array([[5, 5, 3], [9, 9, 3]])
    assert adjusted_rand_index(a, b) == pytest.approx(1.0)
    assert relabelled_agreement(a, b) == 1.0


def test_known_values():
    a = np.array([0, 0, 0, 1, 1, 1])
    b = np.array([0, 0, 1, 1, 2, 2])
    # Pairs: index 2, rows 6, cols 3, total 15 → (2 − 1.2) / (4.5 − 1.2)
    assert adjusted_rand_index(a, b) == pytest.approx(0.8 / 3.3)
    assert relabelled_agreement(a, b) == pytest.approx(4 / 6)
    assert contingency(a, b).tolist() == [[2, 1, 0], [0, 1, 2]]


def test_independent_labelings_score_near_zero():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 20000), rng.integers(0, 4, 20000)
    assert abs(adjusted_rand_index(a, b)) < 0.01
    with pytest.raises(ValueError, match="shape"):
        contingency(a, b[:10])


# ---- benchmark protocols -------------------------------------------------------------------


from oracles import official_diffseg as official  # noqa: E402

from dsseg.evaluation.metrics import (  # noqa: E402
    IGNORE,
    MetricState,
    bsds_scores,
    confusion_matrix,
    hungarian_counts,
    rand_index,
    score,
    segmentation_covering,
    variation_of_information,
)

GT = np.array([[0, 0, 1], [1, 1, IGNORE]])  # 3 classes, class 2 absent, one ignored pixel
PRED = np.array([[0, 1, 1], [1, 2, 2]])  # 3 segments for 2 present classes


def test_hand_computed_per_image_hungarian():
    assert confusion_matrix(PRED, GT, 3).tolist() == [[1, 0, 0], [1, 2, 0], [0, 1, 0]]
    result = score([PRED], [GT], num_classes=3, protocol="per_image")
    # Every class is assigned: s0→0 (TP 1), s1→1 (TP 2, FP 1), s2→2 (absent: its labelled pixel is FP 1).
    assert hungarian_counts(confusion_matrix(PRED, GT, 3)).tolist() == [[1, 2, 0], [0, 1, 1], [1, 1, 0]]
    assert result["per_class_iou"] == [0.5, 0.5, 0.0]
    assert result["miou"] == pytest.approx(100 / 3) and result["acc"] == pytest.approx(60.0)
    assert result["f1"] == pytest.approx(100 * (2 / 3 + 4 / 6 + 0) / 3)  # 2TP / (2TP + FP + FN)
    tp, fp, fn, total = official.hungarian_matching([PRED], [GT], 3)
    assert official.final_scores(tp, fp, fn, total) == pytest.approx((0.6, 1 / 3))


def test_hand_computed_oracle_merge_and_semantic():
    oracle = score([PRED], [GT], num_classes=3, protocol="oracle_merged")
    # s0→0, s1→1, s2→1: TP [1, 3], FP [0, 1], FN [1, 0]; class 2 has no pixel and no segment
    assert oracle["acc"] == pytest.approx(80.0) and oracle["miou"] == pytest.approx(100 * (0.5 + 0.75) / 2)
    assert oracle["per_class_iou"] is None  # a per-image average has no dataset-level class IoU
    semantic = score([PRED], [GT], num_classes=3, protocol="semantic")
    # id = class: (0,0) ✓, (0,1) 1 on 0 ✗, (0,2) ✓, (1,0) ✓, (1,1) 2 on 1 ✗
    assert semantic["acc"] == pytest.approx(60.0)
    assert semantic["per_class_iou"] == pytest.approx([1 / 2, 2 / 4, 0.0])


def _random_case(rng, regime: str, classes: int = 6, shape=(9, 11)):
    """One (pred, gt) pair of a regime: fewer segments than classes present, between present and
    K, more than K, ignore only, one class, or ties (every overlap equal)."""
    gt = rng.integers(0, classes, shape)
    if regime == "few_segments":
        pred = rng.integers(0, 2, shape)
    elif regime == "between":
        gt = rng.integers(0, 3, shape)  # 3 present of 6
        pred = rng.integers(0, 5, shape)
    elif regime == "more_than_k":
        pred = rng.integers(0, classes + 4, shape)
    elif regime == "ignore_only":
        gt = np.full(shape, IGNORE)
        pred = rng.integers(0, 4, shape)
    elif regime == "one_class":
        gt = np.full(shape, int(rng.integers(0, classes)))
        pred = rng.integers(0, 3, shape)
    elif regime == "ties":
        gt = np.tile(np.arange(4), 4).reshape(4, 4)  # classes 0..3 in columns
        pred = np.tile(np.arange(4)[:, None], (1, 4)) + int(rng.integers(0, 6))  # ids in rows: every overlap 1
        return pred, gt
    elif regime == "sparse_ids":  # ids with gaps, larger than K
        pred = rng.choice([0, 3, 9, 14], size=shape)
    else:
        raise ValueError(regime)
    gt = np.where(rng.random(shape) < 0.05, IGNORE, gt)
    return pred, gt


REGIMES = ("few_segments", "between", "more_than_k", "ignore_only", "one_class", "ties", "sparse_ids")


@pytest.mark.parametrize("regime", REGIMES)
def test_per_image_counts_equal_the_official_algorithm(regime):
    rng = np.random.default_rng(REGIMES.index(regime))
    pairs = [_random_case(rng, regime) for _ in range(12)]
    preds, gts = zip(*pairs)
    tp, fp, fn, total = official.hungarian_matching(preds, gts, 6)
    state = sum((MetricState.of_image(p, g, 6) for p, g in pairs), MetricState(6))
    np.testing.assert_array_equal(state.hungarian, np.stack([tp, fp, fn]).astype(np.int64))
    acc, miou = official.final_scores(tp, fp, fn, total)
    result = state.result("per_image")
    if total:
        assert result["acc"] == pytest.approx(100 * acc, abs=1e-9)
    if not np.isnan(miou):
        assert result["miou"] == pytest.approx(100 * miou, abs=1e-9)
    else:
        assert np.isnan(result["miou"])


def test_per_image_protocol_equals_the_official_code_on_many_random_images():
    rng = np.random.default_rng(7)
    preds = [rng.integers(0, int(rng.integers(2, 12)), (64, 64)) for _ in range(40)]
    gts = [np.where(rng.random((64, 64)) < 0.05, IGNORE, rng.integers(0, 27, (64, 64))) for _ in range(40)]
    acc, miou = official.final_scores(*official.hungarian_matching(preds, gts, 27))
    result = score(preds, gts, 27, "per_image")
    assert result["acc"] == pytest.approx(100 * acc, abs=1e-9) and result["miou"] == pytest.approx(100 * miou, abs=1e-9)


def test_per_image_average_scores_each_image_then_averages():
    # Image 1: two classes, split exactly. Image 2: one class, over-segmented into 3 segments:
    # K = 3, so all 3 segments are assigned; the two given absent classes are all FP (IoU 0).
    gt1, pred1 = np.array([[0, 0, 1, 1]]), np.array([[0, 0, 1, 1]])
    gt2, pred2 = np.array([[2, 2, 2, 2]]), np.array([[0, 1, 2, 2]])
    per_image = score([pred1, pred2], [gt1, gt2], 3, "per_image_avg")
    assert per_image["acc"] == pytest.approx((100 + 50) / 2)
    assert per_image["miou"] == pytest.approx((100 + (2 / 4 + 0 + 0) / 3 * 100) / 2)
    oracle = score([pred1, pred2], [gt1, gt2], 3, "oracle_merged")
    assert oracle["miou"] == pytest.approx(100.0) and oracle["acc"] == pytest.approx(100.0)  # merged back: perfect
    summed = score([pred1, pred2], [gt1, gt2], 3, "per_image")
    assert summed["miou"] != pytest.approx(per_image["miou"])  # accumulating first is a different number


def test_perfect_grouping_with_random_ids_per_image_fools_only_the_global_protocol():
    rng = np.random.default_rng(1)
    gts, preds = [], []
    for _ in range(20):
        gt = rng.integers(0, 5, (4, 1)).repeat(6, axis=1)  # stripes of 5 classes
        permutation = rng.permutation(5)
        gts.append(gt)
        preds.append(permutation[gt])  # the same partition, ids shuffled per image
    assert score(preds, gts, 5, "per_image")["miou"] == pytest.approx(100.0)
    assert score(preds, gts, 5, "per_image_avg")["miou"] == pytest.approx(100.0)
    assert score(preds, gts, 5, "oracle_merged")["miou"] == pytest.approx(100.0)
    assert score(preds, gts, 5, "global")["miou"] < 60.0


def test_per_image_average_skips_images_with_no_labelled_pixels():
    gt = np.array([[0, 0, 1, 1]])
    unlabelled = np.full((1, 4), 255)
    assert score([gt, gt], [gt, unlabelled], 2, "per_image_avg")["miou"] == pytest.approx(100.0)
    state = MetricState.of_image(gt, unlabelled, 2) + MetricState.of_image(gt, gt, 2)
    assert (state.images, state.labelled) == (2, 1)


def test_states_reduce_by_summation_in_any_order():
    rng = np.random.default_rng(2)
    pairs = [(rng.integers(0, 6, (8, 8)), rng.integers(0, 3, (8, 8))) for _ in range(6)]
    states = [MetricState.of_image(p, g, 3) for p, g in pairs]
    forward, backward = sum(states, MetricState(3)), sum(reversed(states), MetricState(3))
    for protocol in ("per_image", "global", "per_image_avg", "oracle_merged"):
        assert forward.result(protocol)["miou"] == pytest.approx(backward.result(protocol)["miou"], abs=1e-12)
        assert forward.result(protocol)["miou"] == pytest.approx(score(*zip(*pairs), 3, protocol)["miou"], abs=1e-12)
    with pytest.raises(ValueError, match="protocol"):
        score([pairs[0][0]], [pairs[0][1]], 3, "stego")
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 7), 3)


def test_bsds_scores_known_values():
    a = np.array([[0, 0, 1, 1]])
    b = np.array([[0, 0, 0, 1]])
    assert rand_index(a, b) == pytest.approx(0.5)
    h_a, h_b = np.log(2), -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    h_joint = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
    assert variation_of_information(a, b) == pytest.approx(2 * h_joint - h_a - h_b)
    assert segmentation_covering(a, b) == pytest.approx((3 * 2 / 3 + 1 * 1 / 2) / 4)
    same = bsds_scores(b, [b, b + 7])
    assert same == pytest.approx({"covering": 1.0, "pri": 1.0, "voi": 0.0})
    mixed = bsds_scores(a, [a, b])
    assert mixed["pri"] == pytest.approx(0.75) and mixed["covering"] == pytest.approx((1.0 + 0.625) / 2)
