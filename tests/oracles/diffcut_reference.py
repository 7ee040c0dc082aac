"""DiffCut written the straightforward way, in float64, after its released code
(``diffcut/recursive_normalized_cut.py``): for the equivalence tests of ``dsseg.methods.diffcut``.

Dense matrices; each cut from ``numpy.linalg.eigh`` of D^-½(D − W)D^-½; each candidate's cost from
the Rayleigh quotient the released code evaluates, E = zᵀ(D − W)z / zᵀDz with z = (1 + x) − b(1 − x),
x = ±1 per side, b = k/(1 − k), k the volume share of the upper side; the leaves assembled from the
accepted masks as the code assembles them (float64 codes: its ids while they stay below 2⁵³).
``drop_zero_rows`` (default True, as released) drops, below the root, the nodes with a zero
affinity to any node before each cut (see ``dsseg.methods.diffcut``). Being float64, it may take
the other side as "upper" where a cut is decided by rounding (two-node cuts): compare its leaves
with dsseg's and the released code's as partitions.

``reference_autosc``: AutoSC (``tau="auto"``) after the released ``diffcut/autosc.py`` (commit
4f99ed57), its eigengap over α ∈ {1, 5, 10, 15} and ``cluster_qr``, in float64 (numpy's ``eigh``
for torch's float32 one).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F


def reference_affinity(features: np.ndarray, alpha: float) -> np.ndarray:
    """(N, C) features → (N, N) float64 W = minmax(cosine)^α."""
    rows = features.astype(np.float64)
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    similarity = rows @ rows.T
    return ((similarity - similarity.min()) / (similarity.max() - similarity.min())) ** alpha


def reference_cut(weights: np.ndarray, candidates: int = 100) -> tuple[np.ndarray, float]:
    """The released code's bipartition of a graph: (upper side (n,) bool, its NCut cost)."""
    degrees = weights.sum(1)
    inv_sqrt = np.diag(degrees**-0.5)
    laplacian = np.diag(degrees) - weights
    _, vectors = np.linalg.eigh(inv_sqrt @ laplacian @ inv_sqrt)
    y = inv_sqrt @ vectors[:, 1]
    y = y * np.sign(y[np.argmax(np.abs(y))])
    best, best_cost = None, np.inf
    for threshold in np.linspace(y.min() * 0.99, y.max() * 0.99, candidates):
        x = np.where(y > threshold, 1.0, -1.0)
        k = degrees[x > 0].sum() / degrees.sum()
        b = k / (1 - k)
        z = (1 + x) - b * (1 - x)
        cost = (z @ laplacian @ z) / (z @ (degrees * z))
        if cost < best_cost:
            best, best_cost = y > threshold, cost
    return best, float(best_cost)


def reference_leaves(features: np.ndarray, tau: float, alpha: float = 10.0, drop_zero_rows: bool = True) -> np.ndarray:
    """(N,) leaf ids 0..S−1 of the recursive cut, assembled from the accepted masks by the
    released code's rule (each mask added with a weight above every sum so far, codes relabelled)."""
    weights = reference_affinity(features, alpha)
    n = len(weights)
    masks: list[np.ndarray] = []

    def recurse(nodes: np.ndarray, level: int) -> None:
        if drop_zero_rows and level > 0:
            nodes = nodes[~(weights[nodes] == 0).any(axis=1)]
        if len(nodes) <= 1:
            return
        upper, cost = reference_cut(weights[np.ix_(nodes, nodes)])
        if cost < tau:
            mask = np.zeros(n, dtype=bool)
            mask[nodes[upper]] = True
            masks.append(mask)
            recurse(nodes[upper], level + 1)
            recurse(nodes[~upper], level + 1)

    recurse(np.arange(n), 0)
    codes, step = np.zeros(n), 1.0
    for mask in masks:
        codes += step * mask
        step = codes.max() + 1
    return np.unique(codes, return_inverse=True)[1].reshape(-1)


def reference_labels(
    features: np.ndarray, grid: tuple[int, int], leaves: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """(H, W) labels at ``size``: per cell, the leaf whose mean unit feature has the largest dot
    product with the cell's bilinearly upsampled unit feature (features upsampled, as the code does)."""
    rows = features.astype(np.float64)
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    embeddings = np.stack([rows[leaves == s].mean(0) for s in range(leaves.max() + 1)])
    field = torch.from_numpy(rows.T.reshape(1, -1, *grid).copy())
    upsampled = F.interpolate(field, size=size, mode="bilinear", align_corners=False)[0].numpy()
    return np.einsum("chw,sc->shw", upsampled, embeddings).argmax(0)


# AutoSC (``tau="auto"``), transcribed from the released ``diffcut/autosc.py`` (PaulCouairon/DiffCut,
# commit 4f99ed577051674a6b041a36da1b378cbd348496, ``DiffCut_AutoSC.ncut`` and ``cluster_qr``), in float64.

AUTOSC_ALPHAS = (1, 5, 10, 15)


def reference_cluster_qr(vectors: np.ndarray) -> np.ndarray:
    """The released ``cluster_qr``, line by line: (N, k) → (N,) column ids."""
    k = vectors.shape[1]
    _, _, piv = scipy.linalg.qr(vectors.T, pivoting=True)
    ut, _, v = scipy.linalg.svd(vectors[piv[:k], :].T)
    vectors = abs(np.dot(vectors, np.dot(ut, v.conj())))
    return vectors.argmax(axis=1)


def reference_autosc(features: np.ndarray, vectors: str = "last") -> tuple[np.ndarray, int, int]:
    """The released ``DiffCut_AutoSC.ncut`` on (N, C) features → ((N,) ids 0..S−1, the ranks of the
    ``cluster_qr`` ids present, as its ``generate_masks`` numbers them; k; the α that chose k).

    For each α in 1, 5, 10, 15 (in order): A = minmax(cosine)^α, D = diag(A·1), the eigenpairs of
    D^-½(D − A)D^-½ (ascending), the eigenvectors mapped by D^-½; regL_i = (λ_i − m_i)/(m_i + 1e-6),
    m_i the running mean; when max regL > the best so far (0 to start), k = argmax regL (the first)
    and α is kept. Then ``cluster_qr`` on the first k eigenvectors of the LAST α's decomposition (the
    code's ``vectors = eigenvectors`` inside the loop is never read) — or, ``vectors="chosen"``, of
    the chosen α's (the other reading)."""
    affinity = reference_affinity(features, 1.0)
    max_gap, nb_clusters, chosen, kept = 0.0, None, None, None
    for alpha in AUTOSC_ALPHAS:
        A = affinity**alpha
        D = np.diag(A.sum(axis=1))
        D_inv_sqrt = np.diag(1 / np.diag(D) ** 0.5)
        eigenvalues, eigenvectors = np.linalg.eigh(D_inv_sqrt @ (D - A) @ D_inv_sqrt)
        eigenvectors = D_inv_sqrt @ eigenvectors
        cummean = np.cumsum(eigenvalues) / np.arange(1, len(eigenvalues) + 1)
        reg_L = (eigenvalues - cummean) / (cummean + 1e-6)
        if reg_L.max() > max_gap:
            max_gap, nb_clusters, chosen, kept = reg_L.max(), int(np.argmax(reg_L)), alpha, eigenvectors
    source = kept if vectors == "chosen" else eigenvectors
    ids = reference_cluster_qr(source[:, :nb_clusters])
    return np.unique(ids, return_inverse=True)[1].reshape(-1), nb_clusters, chosen
