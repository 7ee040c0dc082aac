"""Agreement between label maps (more benchmark metrics arrive with the evaluation stage)."""

from __future__ import annotations

import numpy as np


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(|ids of a|, |ids of b|) int64 pixel counts of two labelings of the same pixels."""
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    _, a_ids = np.unique(a.ravel(), return_inverse=True)
    _, b_ids = np.unique(b.ravel(), return_inverse=True)
    table = np.zeros((a_ids.max() + 1, b_ids.max() + 1), dtype=np.int64)
    np.add.at(table, (a_ids, b_ids), 1)
    return table


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (1 = identical partitions, ~0 = chance)."""
    table = contingency(a, b).astype(np.float64)

    def pairs(counts: np.ndarray) -> float:
        return float((counts * (counts - 1) / 2).sum())

    index, rows, cols, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), pairs(np.array([a.size]))
    expected = rows * cols / total
    denominator = (rows + cols) / 2 - expected
    return 1.0 if denominator == 0 else (index - expected) / denominator


def relabelled_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels on which two label maps agree under a one-to-one matching of their
    ids, chosen greedily by overlap (exact when the maps are equal up to relabelling)."""
    table = contingency(a, b)
    agree = 0
    while table.size and table.max() > 0:
        i, j = np.unravel_index(table.argmax(), table.shape)
        agree += int(table[i, j])
        table[i, :] = 0
        table[:, j] = 0
    return agree / a.size
