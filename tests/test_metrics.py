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
