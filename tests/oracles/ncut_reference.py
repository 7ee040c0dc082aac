"""Recursive NCut written the straightforward way, in float64 numpy/scipy, for equivalence tests
and ``dsseg benchmark --compare`` (from a source checkout).

Dense adjacency matrices, a dense generalised eigensolver (``scipy.linalg.eigh(D − W, D)``) or
a dense non-symmetric eigendecomposition for the random walk, and every split position's NCut
summed from its definition (one indicator column per position). O(n³) per split: small grids.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from dsseg.methods.ncut import NCutConfig


def reference_graph(transition: np.ndarray, graph: str = "dot", power: int = 1) -> np.ndarray:
    """Dense weights (n, n) float64 from a row-stochastic P (n, n): Pᵏ itself (``random_walk``),
    Pᵏ·(Pᵏ)ᵀ (``dot``) or the cosine similarity of the rows of Pᵏ (``cosine``)."""
    walk = np.linalg.matrix_power(transition.astype(np.float64), power)
    if graph == "random_walk":
        return walk
    if graph == "cosine":
        walk = walk / np.linalg.norm(walk, axis=1, keepdims=True)
    return walk @ walk.T


def reference_fiedler(weights: np.ndarray, directed: bool) -> np.ndarray:
    """Second eigenvector: of (D − W)x = λDx for symmetric W, of D⁻¹W (largest real part) otherwise."""
    degrees = weights.sum(1)
    if not directed:
        _, vectors = scipy.linalg.eigh(np.diag(degrees) - weights, np.diag(degrees), subset_by_index=[1, 1])
        return vectors[:, 0]
    values, vectors = np.linalg.eig(weights / degrees[:, None])
    return vectors[:, np.argsort(-values.real)[1]].real


def reference_ncut_cost(weights: np.ndarray, right: np.ndarray) -> tuple[float, float]:
    """(NCut(A, B), cut(A, B) + cut(B, A)) for B = ``right``, summed from the definition."""
    left = ~right
    cut_ab, cut_ba = weights[np.ix_(left, right)].sum(), weights[np.ix_(right, left)].sum()
    return cut_ab / weights[left].sum() + cut_ba / weights[right].sum(), cut_ab + cut_ba


def reference_manc(weights: np.ndarray) -> tuple[float, float]:
    """(MAN-C threshold n·T/(2m), T) with T the total weight of undirected edges i < j."""
    n = len(weights)
    upper = np.triu(weights + weights.T, 1)
    total, edges = upper.sum() / 2.0, np.count_nonzero(upper)
    return (n * total / (2 * edges) if edges else 0.0), total


def reference_ncut(transition: np.ndarray, config: NCutConfig) -> np.ndarray:
    """Recursive NCut of the rows of P (n, n) → (n,) int64 leaf ids (depth first, lower Fiedler side
    first), trying every split position along each Fiedler vector. From ``config`` it reads
    graph (not ``diffcut``), power, stopping, threshold, min_segment_size and max_depth."""
    if config.graph == "diffcut" or config.split_candidates is not None:
        raise ValueError("the reference covers graph dot/cosine/random_walk with every split position")
    weights = reference_graph(transition, config.graph, config.power)
    directed = config.graph == "random_walk"
    min_size, max_depth = config.min_segment_size, config.max_depth
    labels = np.zeros(len(weights), dtype=np.int64)
    leaves = 0
    stack = [(np.arange(len(weights)), 0)]
    while stack:
        nodes, depth = stack.pop()
        split = None
        if depth < max_depth and len(nodes) >= 2 * min_size:
            sub = weights[np.ix_(nodes, nodes)]
            split = _best_split(sub, directed, min_size)
        if split is not None and _accept(sub, split, config.stopping, config.threshold):
            right = split[0]
            stack.append((nodes[right], depth + 1))
            stack.append((nodes[~right], depth + 1))
            continue
        labels[nodes] = leaves
        leaves += 1
    return labels


def _best_split(weights: np.ndarray, directed: bool, min_size: int) -> tuple[np.ndarray, float, float] | None:
    x = reference_fiedler(weights, directed)
    x = x if x[np.argmax(np.abs(x))] >= 0 else -x
    order = np.argsort(x, kind="stable")
    positions = [m for m in range(min_size, len(x) - min_size + 1) if x[order[m]] > x[order[m - 1]]]
    if not positions:
        return None
    right = np.zeros((len(x), len(positions)))  # one column per split: B = nodes from position m on
    for column, m in enumerate(positions):
        right[order[m:], column] = 1.0
    left = 1.0 - right
    degrees = weights.sum(1)
    cut_ab = ((weights @ right) * left).sum(0)
    cut_ba = ((weights @ left) * right).sum(0)
    costs = cut_ab / (degrees @ left) + cut_ba / (degrees @ right)
    best = int(np.argmin(costs))
    return right[:, best].astype(bool), float(costs[best]), float(cut_ab[best] + cut_ba[best])


def _accept(
    weights: np.ndarray, split: tuple[np.ndarray, float, float], stopping: str, threshold: float | None
) -> bool:
    _, cost, cut = split
    if stopping == "threshold":
        return cost < threshold
    manc, total = reference_manc(weights)
    return cost < manc if stopping == "manc_ncut" else (cut / 2) / total < manc
