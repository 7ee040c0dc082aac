import numpy as np
import pytest

from dsseg.metrics import adjusted_rand_index, contingency, relabelled_agreement


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

import itertools  # noqa: E402

from dsseg.metrics import (  # noqa: E402
    IGNORE,
    MetricState,
    bsds_scores,
    confusion_matrix,
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
    # s0→0 (TP 1), s1→1 (TP 2, FP 1); s2 unmatched; FN: one pixel of each class; class 2 absent.
    assert result["per_class_iou"][:2] == [0.5, 0.5] and np.isnan(result["per_class_iou"][2])
    assert result["miou"] == pytest.approx(50.0) and result["acc"] == pytest.approx(60.0)
    assert result["f1"] == pytest.approx(100 * 2 / 3)


def test_hand_computed_oracle_merge_and_semantic():
    oracle = score([PRED], [GT], num_classes=3, protocol="oracle_merged")
    # s0→0, s1→1, s2→1: TP [1, 3], FP [0, 1], FN [1, 0]
    assert oracle["per_class_iou"][:2] == [0.5, 0.75] and oracle["acc"] == pytest.approx(80.0)
    semantic = score([PRED], [GT], num_classes=3, protocol="semantic")
    # id = class: (0,0) ✓, (0,1) 1 on 0 ✗, (0,2) ✓, (1,0) ✓, (1,1) 2 on 1 ✗
    assert semantic["acc"] == pytest.approx(60.0)
    assert semantic["per_class_iou"] == pytest.approx([1 / 2, 2 / 4, 0.0])


def _brute_force_counts(preds, gts, num_classes):
    """TP, FP, FN per class by enumerating every assignment and counting pixel by pixel; None
    when two assignments tie (the protocol is then ambiguous)."""
    counts = np.zeros((3, num_classes))
    for pred, gt in zip(preds, gts):
        segments = sorted(set(pred.ravel().tolist()))
        classes = sorted(set(gt.ravel().tolist()) - {IGNORE})
        overlap = {(s, k): sum(1 for p, g in zip(pred.ravel(), gt.ravel()) if p == s and g == k) for s in segments for k in classes}
        size = max(len(segments), len(classes))
        best, best_pairs = -1, set()
        for order in itertools.permutations(range(size)):
            pairs = {(segments[i], classes[j]) for i, j in enumerate(order) if i < len(segments) and j < len(classes)}
            pairs = {pair for pair in pairs if overlap[pair] > 0}
            total = sum(overlap[pair] for pair in pairs)
            if total > best:
                best, best_pairs = total, {frozenset(pairs)}
            elif total == best:
                best_pairs.add(frozenset(pairs))
        if len(best_pairs) > 1:
            return None
        match = dict(next(iter(best_pairs)))
        for p, g in zip(pred.ravel(), gt.ravel()):
            if g == IGNORE:
                continue
            k = match.get(p)
            if k == g:
                counts[0, g] += 1
            else:
                counts[2, g] += 1
                if k is not None:
                    counts[1, k] += 1
    return counts


def test_per_image_protocol_equals_brute_force_on_random_maps():
    rng = np.random.default_rng(0)
    checked = 0
    while checked < 25:
        shape = (int(rng.integers(3, 9)), int(rng.integers(3, 9)))
        preds = [rng.integers(0, int(rng.integers(1, 5)), shape) for _ in range(3)]
        gts = [np.where(rng.random(shape) < 0.1, IGNORE, rng.integers(0, 4, shape)) for _ in range(3)]
        expected = _brute_force_counts(preds, gts, 4)
        if expected is None:
            continue
        tp, fp, fn = expected
        union = tp + fp + fn
        iou = [t / u for t, u in zip(tp, union) if u > 0]
        result = score(preds, gts, num_classes=4)
        assert result["miou"] == pytest.approx(100 * np.mean(iou), abs=1e-9)
        assert result["acc"] == pytest.approx(100 * tp.sum() / (tp + fn).sum(), abs=1e-9)
        checked += 1


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
