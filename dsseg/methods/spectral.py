"""Graphs, Fiedler vectors and Normalised-Cut costs for two-way spectral partitioning.

A graph over n nodes has non-negative weights W (n, n), given either densely
(``DenseGraph``, possibly non-symmetric, e.g. a random-walk transition matrix) or as node
features F with W = F·Fᵀ (``FeatureGraph``: dot-product or cosine adjacency, never
materialised). Degrees are row sums d = W·1.

The NCut cost of a split of V into A and B (Shi & Malik) uses directed cuts, which equal the
usual ones for symmetric W:

    NCut(A, B) = cut(A, B) / vol(A) + cut(B, A) / vol(B),
    cut(X, Y) = Σ_{i∈X, j∈Y} W_ij,   vol(X) = Σ_{i∈X} d_i.

For a random walk with transitions D⁻¹W this is P(A→B | start in A) + P(B→A | start in B),
starting in proportion to degree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Sub-graphs up to this many nodes are solved with a dense eigendecomposition.
DENSE_EIGEN_LIMIT = 256
# Rows per block in FeatureGraph.prefix_association.
PREFIX_BLOCK = 16
# Seed of the start vector of the iterative solvers (fixed: same input, same output).
START_SEED = 0
# Lanczos steps between convergence checks: each is a small tridiagonal eigenproblem on the CPU, far
# cheaper than a mat-vec, so every step is checked and a solve stops at the first converged step.
RITZ_CHECK_EVERY = 1


class DenseGraph:
    """Explicit weights ``weights`` (n, n) float32, non-negative; symmetric unless ``directed``."""

    def __init__(self, weights: torch.Tensor, directed: bool = False) -> None:
        self.weights = weights.float()
        self.directed = directed
        self._degrees: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.weights.shape[0]

    @property
    def device(self) -> torch.device:
        return self.weights.device

    def subgraph(self, nodes: torch.Tensor) -> DenseGraph:
        """The graph restricted to ``nodes`` (k,) int64: weights W[nodes][:, nodes]."""
        return DenseGraph(self.weights[nodes][:, nodes], self.directed)

    def degrees(self) -> torch.Tensor:
        """(n,) row sums (computed once)."""
        if self._degrees is None:
            self._degrees = self.weights.sum(1)
        return self._degrees

    def in_degrees(self) -> torch.Tensor:
        """(n,) column sums (= degrees when symmetric)."""
        return self.weights.sum(0) if self.directed else self.degrees()

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """W·x for x (n,) or (n, b)."""
        return self.weights @ x

    def dense(self) -> torch.Tensor:
        return self.weights

    def edge_stats(self) -> tuple[float, int]:
        """(T, m): total weight of the undirected edges {i, j}, i ≠ j, with weight (W_ij + W_ji)/2,
        and the number of such edges with positive weight."""
        upper = torch.triu(self.weights + self.weights.T, diagonal=1)
        return float(upper.double().sum()) / 2.0, int((upper > 0).sum())

    def prefix_association(self, order: torch.Tensor) -> torch.Tensor:
        """(n,) float64: entry m−1 is Σ_{i,j ∈ A_m} W_ij for A_m = the first m nodes of ``order``."""
        ordered = self.weights[order][:, order]
        added = torch.tril(ordered, -1).sum(1) + torch.triu(ordered, 1).sum(0) + ordered.diagonal()
        return added.double().cumsum(0)


class FeatureGraph:
    """Weights W = F·Fᵀ from node features ``features`` (n, f) float32, non-negative; W is never built
    except for small sub-graphs. Sub-graphs keep every feature column, so each row's squared norm
    and whether all features are positive carry over from the parent instead of being recomputed."""

    directed = False

    def __init__(
        self, features: torch.Tensor, row_norms2: torch.Tensor | None = None, positive: bool | None = None
    ) -> None:
        self.features = features.float()
        self._degrees: torch.Tensor | None = None
        self._row_norms2 = row_norms2
        self._positive = positive

    @property
    def size(self) -> int:
        return self.features.shape[0]

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def row_norms2(self) -> torch.Tensor:
        """(n,) float64 ‖F_i‖² = W_ii (computed once, inherited by sub-graphs)."""
        if self._row_norms2 is None:
            self._row_norms2 = torch.linalg.vector_norm(self.features, dim=1).double() ** 2
        return self._row_norms2

    @property
    def positive(self) -> bool:
        """Whether every feature is > 0 (then every pair of nodes is an edge); inherited by sub-graphs."""
        if self._positive is None:
            self._positive = bool((self.features > 0).all())
        return self._positive

    def subgraph(self, nodes: torch.Tensor) -> FeatureGraph:
        """The graph restricted to ``nodes`` (k,) int64 (features keep all f columns)."""
        return FeatureGraph(self.features[nodes], self.row_norms2[nodes], self._positive)

    def degrees(self) -> torch.Tensor:
        """(n,) row sums F·(Fᵀ·1) (computed once)."""
        if self._degrees is None:
            self._degrees = self.features @ self.features.sum(0)
        return self._degrees

    def in_degrees(self) -> torch.Tensor:
        return self.degrees()

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """W·x = F·(Fᵀ·x) for x (n,) or (n, b)."""
        return self.features @ (self.features.T @ x)

    def dense(self) -> torch.Tensor:
        return self.features @ self.features.T

    def edge_stats(self) -> tuple[float, int]:
        """(T, m) as ``DenseGraph.edge_stats``; T = (‖Σ_i F_i‖² − Σ_i ‖F_i‖²)/2, with ‖Σ_i F_i‖² = Σ_i d_i
        from the degrees. Features without zeros give a complete graph; otherwise pairs with disjoint
        supports are not edges."""
        n = self.size
        total = float(self.degrees().double().sum() - self.row_norms2.sum()) / 2.0
        if self.positive:
            return total, n * (n - 1) // 2
        support = (self.features > 0).float()
        overlaps = torch.triu(support @ support.T, diagonal=1)
        return total, int((overlaps > 0).sum())

    def prefix_association(self, order: torch.Tensor) -> torch.Tensor:
        """(n,) float64: entry m−1 is Σ_{i,j ∈ A_m} W_ij = ‖C_m‖², C_m = Σ_{i∈A_m} F_i, for the first m
        nodes of ``order``.

        Blocked so that no (n, f) prefix array is built: within a block of B rows starting at
        offset O (the sum of all earlier rows, float64), ‖O + c_r‖² = ‖O‖² + 2·Σ_{i≤r} F_i·O +
        Σ_{i,j≤r} F_i·F_j, the last from the block's B × B Gram matrix.
        """
        n, width = self.features.shape
        blocks_count = -(-n // PREFIX_BLOCK)
        padded = self.features.new_empty(blocks_count * PREFIX_BLOCK, width)
        torch.index_select(self.features, 0, order, out=padded[:n])  # gathered in place: one copy, not two
        padded[n:] = 0.0
        blocks = padded.view(blocks_count, PREFIX_BLOCK, width)
        sums = blocks.sum(1).double()
        offsets = sums.cumsum(0) - sums  # (blocks, f): sum of the rows before each block
        offset_norms = (offsets * offsets).sum(1)
        projections = torch.bmm(blocks, offsets.float()[:, :, None])[..., 0].double().cumsum(1)
        gram = torch.bmm(blocks, blocks.transpose(1, 2)).double()
        inner = gram.cumsum(1).cumsum(2).diagonal(dim1=1, dim2=2)
        return (offset_norms[:, None] + 2.0 * projections + inner).reshape(-1)[:n]


Graph = DenseGraph | FeatureGraph


@dataclass(frozen=True)
class Split:
    """A two-way split of a graph's nodes: ``right`` (n,) bool marks B (the larger Fiedler values),
    with its NCut cost and its cut weight cut(A, B) + cut(B, A) (= 2·cut for symmetric W)."""

    right: torch.Tensor
    ncut: float
    cut: float


def start_vector(n: int, device: torch.device) -> torch.Tensor:
    """A fixed pseudo-random (n,) float32 vector, drawn on the CPU so every device starts alike."""
    generator = torch.Generator().manual_seed(START_SEED)
    return torch.rand(n, generator=generator).to(device) - 0.5


def fixed_sign(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the sign that makes its largest-magnitude entry positive."""
    return x if x[x.abs().argmax()] >= 0 else -x


def fiedler_vector(graph: Graph, max_steps: int = 200, tolerance: float = 1e-5) -> tuple[torch.Tensor, float]:
    """Second generalised eigenpair of (D − W)·x = λ·D·x for symmetric W: ((n,) float32 x, λ).

    Solved in the symmetric normalised form M = D^-½·W·D^-½ (eigenvalue μ = 1 − λ, y = D^½·x):
    the top eigenvector of M, D^½·1, is known and deflated; the largest remaining eigenpair comes
    from a dense eigendecomposition for n ≤ ``DENSE_EIGEN_LIMIT``, else from Lanczos with full
    reorthogonalisation (matrix-free, restarted until the residual ‖M·y − μ·y‖ ≤ ``tolerance``).
    The sign is fixed (largest |x_i| positive).
    """
    n = graph.size
    degrees = graph.degrees().clamp_min(torch.finfo(torch.float32).tiny)
    inv_sqrt = degrees.rsqrt()
    top = degrees.sqrt()
    top = top / top.norm()
    if n <= DENSE_EIGEN_LIMIT:
        normalised = inv_sqrt[:, None] * graph.dense() * inv_sqrt[None, :]
        normalised = normalised - top[:, None] * top[None, :]
        values, vectors = torch.linalg.eigh(0.5 * (normalised + normalised.T))
        mu, y = float(values[-1]), vectors[:, -1]
    else:
        mu, y = lanczos_largest(
            lambda v: inv_sqrt[:, None] * graph.matmul(inv_sqrt[:, None] * v), top, max_steps, tolerance
        )
    return fixed_sign(inv_sqrt * y), 1.0 - mu


def laplacian_fiedler_vector(graph: Graph) -> torch.Tensor:
    """DiffCut's released solver: the second-smallest eigenvector v of the normalised Laplacian
    D^-½·(D − W)·D^-½ from a dense float32 ``torch.linalg.eigh`` (its column 1), mapped back to
    x = D^-½·v with the sign that makes the largest |x_i| positive; (n,) float32.

    The same generalised eigenvector as ``fiedler_vector``, computed from the same matrix and in the
    same order of operations as ``diffcut/recursive_normalized_cut.py``, so that the split values and
    the sides of nodes near them follow that code (dense: O(n³), n ≤ 1024 for a 1024² DiffCut input).
    """
    degrees = graph.degrees()
    inv_sqrt = 1.0 / degrees.sqrt()
    laplacian = torch.diag(degrees) - graph.dense()
    _, vectors = torch.linalg.eigh(inv_sqrt[:, None] * laplacian * inv_sqrt[None, :])
    return fixed_sign(inv_sqrt * vectors[:, 1])


def lanczos_largest(
    matmul, deflated: torch.Tensor, max_steps: int, tolerance: float, restarts: int = 4
) -> tuple[float, torch.Tensor]:
    """Largest eigenpair of a symmetric operator on the complement of the unit vector ``deflated`` (n,).

    ``matmul`` maps (n, b) → (n, b). Lanczos with full reorthogonalisation for at most
    ``max_steps`` steps per cycle, restarted from the best Ritz vector up to ``restarts`` times.
    Returns (eigenvalue, (n,) unit eigenvector).
    """
    n = deflated.shape[0]
    steps = min(max_steps, n - 1)
    q = start_vector(n, deflated.device)
    value = 0.0
    for _ in range(restarts + 1):
        value, q, residual = _lanczos_cycle(matmul, deflated, q, steps, tolerance)
        if residual <= tolerance:
            break
    return value, q


def _lanczos_cycle(
    matmul, deflated: torch.Tensor, start: torch.Tensor, steps: int, tolerance: float
) -> tuple[float, torch.Tensor, float]:
    """One Lanczos cycle from ``start``: (Ritz value, unit Ritz vector, residual norm)."""
    n = deflated.shape[0]
    basis = torch.zeros(steps + 1, n, dtype=torch.float32, device=deflated.device)
    basis[0] = _orthonormalise(start, deflated[None])
    diagonal: list[float] = []
    off_diagonal: list[float] = []
    for j in range(steps):
        w = matmul(basis[j][:, None])[:, 0]
        diagonal.append(float(basis[j] @ w))
        w = _orthonormalise(w, torch.cat([deflated[None], basis[: j + 1]]), normalise=False)
        beta = float(w.norm())
        last = j + 1 == steps or beta < 1e-7
        if not last and (j + 1) % RITZ_CHECK_EVERY:
            off_diagonal.append(beta)
            basis[j + 1] = w / beta
            continue
        value, ritz = _top_ritz(diagonal, off_diagonal)
        residual = beta * abs(float(ritz[-1]))
        if last or residual <= tolerance:
            vector = ritz.to(basis) @ basis[: j + 1]
            return value, vector / vector.norm(), residual
        off_diagonal.append(beta)
        basis[j + 1] = w / beta
    raise AssertionError("unreachable: the last step returns")


def _orthonormalise(v: torch.Tensor, against: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """``v`` (n,) minus its projection on the orthonormal rows of ``against`` (twice, for stability)."""
    for _ in range(2):
        v = v - (against @ v) @ against
    return v / v.norm() if normalise else v


def _top_ritz(diagonal: list[float], off_diagonal: list[float]) -> tuple[float, torch.Tensor]:
    """Largest eigenpair of the symmetric tridiagonal matrix (float64, CPU)."""
    k = len(diagonal)
    tridiagonal = torch.diag(torch.tensor(diagonal, dtype=torch.float64))
    if k > 1:
        beta = torch.tensor(off_diagonal[: k - 1], dtype=torch.float64)
        tridiagonal += torch.diag(beta, 1) + torch.diag(beta, -1)
    values, vectors = torch.linalg.eigh(tridiagonal)
    return float(values[-1]), vectors[:, -1]


def random_walk_vector(
    graph: DenseGraph, max_iterations: int = 1000, tolerance: float = 1e-6
) -> tuple[torch.Tensor, float]:
    """Second eigenvector of the random walk T = D⁻¹·W for any (also non-symmetric) W: ((n,) x, μ).

    Power iteration on the lazy walk L = (I + T)/2 (T's spectrum moved into the right half plane,
    so the dominant eigenvalue is the largest real one) with one deflation: L's top eigenpair
    (1, 𝟙) is removed by Wielandt deflation G = L − 𝟙·𝟙ᵀ/n, whose other eigenvectors are L's
    (and T's) shifted by a constant — the same order of nodes, so the same splits.
    Returns x (unit norm, fixed sign) with G·x ≈ ((1 + μ)/2)·x, μ the eigenvalue of T.
    """
    degrees = graph.degrees()
    x = start_vector(graph.size, graph.device)
    x = x / x.norm()
    for _ in range(max_iterations):
        step = deflated_lazy_walk(graph, x, degrees)
        step = fixed_sign(step / step.norm())
        change = float((step - x).norm())
        x = step
        if change <= tolerance:
            break
    return x, 2.0 * float(x @ deflated_lazy_walk(graph, x, degrees)) - 1.0


def deflated_lazy_walk(graph: DenseGraph, v: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """G·v = (v + D⁻¹·W·v)/2 − mean(v)·𝟙 for v (n,), ``degrees`` (n,) the row sums of W."""
    return 0.5 * (v + graph.matmul(v) / degrees.clamp_min(torch.finfo(torch.float32).tiny)) - v.mean()


def best_split(
    graph: Graph, x: torch.Tensor, min_size: int = 1, candidates: int | None = None, span: float | None = None
) -> Split | None:
    """The lowest-NCut split of ``graph`` into {x ≤ v} and {x > v} over split values v along ``x`` (n,).

    ``candidates``: None tries every value between consecutive distinct entries of x (all n − 1
    positions, O(n²) work in total through prefix sums); an integer c tries c values evenly spaced
    strictly between min(x) and max(x) (Shi & Malik), or, with ``span`` s, c values from s·min(x)
    to s·max(x) inclusive (DiffCut: s = 0.99). Both sides must keep ≥ ``min_size`` nodes. Returns
    None when no split is allowed.
    """
    n = graph.size
    order = torch.argsort(x, stable=True)
    ordered = x[order]
    degrees = graph.degrees().double()
    volume = degrees[order].cumsum(0)
    in_volume = graph.in_degrees().double()[order].cumsum(0)
    association = graph.prefix_association(order)
    # position m (1..n−1): A = first m nodes
    volume_a, in_volume_a, assoc_a = volume[:-1], in_volume[:-1], association[:-1]
    volume_b = volume[-1] - volume_a
    cut_ab, cut_ba = volume_a - assoc_a, in_volume_a - assoc_a
    tiny = torch.finfo(torch.float64).tiny
    costs = cut_ab / volume_a.clamp_min(tiny) + cut_ba / volume_b.clamp_min(tiny)
    sizes = torch.arange(1, n, device=x.device)
    allowed = (ordered[1:] > ordered[:-1]) & (sizes >= min_size) & (n - sizes >= min_size)
    if candidates is not None:
        if span is None:
            values = torch.linspace(float(ordered[0]), float(ordered[-1]), candidates + 2, device=x.device)[1:-1]
        else:  # float32 ends from the vector itself, as DiffCut's code computes them: torch.linspace(0.99·min, 0.99·max)
            values = torch.linspace(ordered[0] * span, ordered[-1] * span, candidates, device=x.device)
        positions = torch.searchsorted(ordered, values.to(ordered.dtype), right=True)
        chosen = torch.zeros_like(allowed)
        chosen[(positions - 1).clamp(0, n - 2)] = True
        allowed &= chosen
    if not bool(allowed.any()):
        return None
    costs = torch.where(allowed, costs, torch.full_like(costs, torch.inf))
    position = int(costs.argmin())
    right = torch.zeros(n, dtype=torch.bool, device=x.device)
    right[order[position + 1 :]] = True
    return Split(right=right, ncut=float(costs[position]), cut=float(cut_ab[position] + cut_ba[position]))
