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

A recursive cut asks a graph for its two sides after a split (``children``). A ``FeatureGraph``
keeps the features of its sub-graphs in two buffers (``SortBuffers``) in the order of each split's
Fiedler vector, so that each side is a contiguous view and no split allocates (fresh memory costs
a page fault per 4 KiB: about 30 ms per 64 MiB on a CPU, three times the gather itself).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

# Sub-graphs up to this many nodes are solved with a dense eigendecomposition: explicit weights up to
# 256; features up to 128, as forming W = F·Fᵀ costs n²·f (above that, Lanczos' ~10 mat-vecs are cheaper).
DENSE_EIGEN_LIMIT = 256
FEATURE_DENSE_EIGEN_LIMIT = 128
# Rows per block in FeatureGraph.prefix_association.
PREFIX_BLOCK = 16
# SortBuffers up to this many bytes (both buffers) are kept for the next cut on the same thread (CPU
# only: CUDA's caching allocator already reuses its blocks): 512 MiB holds two 8,192 × 8,192 buffers.
CACHED_BUFFER_BYTES = 512 * 2**20
# Seed of the start vector of the iterative solvers (fixed: same input, same output).
START_SEED = 0
# Weight of the seeded start vector in a warm start (``Split.hint``), so that no start is orthogonal to
# the wanted eigenvector.
HINT_NOISE = 1e-2


class DenseGraph:
    """Explicit weights ``weights`` (n, n) float32, non-negative; symmetric unless ``directed``."""

    def __init__(self, weights: torch.Tensor, directed: bool = False) -> None:
        self.weights = weights.float()
        self.directed = directed
        self.hint: torch.Tensor | None = None  # (n,) a guess at the Fiedler vector (``Split.hint``)
        self._degrees: torch.Tensor | None = None
        self._edge_stats: tuple[float, int] | None = None

    @property
    def size(self) -> int:
        return self.weights.shape[0]

    @property
    def device(self) -> torch.device:
        return self.weights.device

    def subgraph(self, nodes: torch.Tensor) -> DenseGraph:
        """The graph restricted to ``nodes`` (k,) int64: weights W[nodes][:, nodes]."""
        return DenseGraph(self.weights[nodes][:, nodes], self.directed)

    def children(self, split: Split) -> tuple[torch.Tensor, DenseGraph, torch.Tensor, DenseGraph]:
        """The two sides of ``split``: (lower nodes (k,) int64 ascending, its sub-graph, upper nodes, its sub-graph)."""
        lower, upper = torch.nonzero(~split.right)[:, 0], torch.nonzero(split.right)[:, 0]
        lower_graph, upper_graph = self.subgraph(lower), self.subgraph(upper)
        if split.hint is not None:
            lower_graph.hint, upper_graph.hint = split.hint[lower], split.hint[upper]
        return lower, lower_graph, upper, upper_graph

    def start_values(self) -> torch.Tensor:
        """(n,) float32 start vector of the iterative solvers (``start_vector`` of the node positions)."""
        return start_vector(self.size, self.device)

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
        and the number of such edges with positive weight (computed once)."""
        if self._edge_stats is None:
            upper = torch.triu(self.weights + self.weights.T, diagonal=1)
            self._edge_stats = float(upper.double().sum()) / 2.0, int((upper > 0).sum())
        return self._edge_stats

    def prefix_association(self, order: torch.Tensor) -> torch.Tensor:
        """(n,) float64: entry m−1 is Σ_{i,j ∈ A_m} W_ij for A_m = the first m nodes of ``order``."""
        ordered = self.weights[order][:, order]
        added = torch.tril(ordered, -1).sum(1) + torch.triu(ordered, 1).sum(0) + ordered.diagonal()
        return added.double().cumsum(0)


class SortBuffers:
    """Two (N, f) float32 buffers for the sub-graphs of one recursive cut of an N-node ``FeatureGraph``.

    A sub-graph at depth d ≥ 1 holds rows [offset, offset + k) of buffer (d − 1) mod 2 (the root
    keeps its own features). Sorting it by its Fiedler vector writes the same rows of the other
    buffer, where only its parent lay (already split), and its two sides are the two parts of
    those rows. Siblings and cousins hold disjoint rows, so no pending sub-graph is overwritten.
    """

    def __init__(self, rows: int, width: int, device: torch.device) -> None:
        self.buffers = (
            torch.empty(rows, width, dtype=torch.float32, device=device),
            torch.empty(rows, width, dtype=torch.float32, device=device),
        )

    @classmethod
    def for_graph(cls, rows: int, width: int, device: torch.device) -> SortBuffers:
        """Buffers for an N = ``rows`` node cut: on a CPU the calling thread's last ones when they fit
        (``CACHED_BUFFER_BYTES``), so a job's images do not each pay for fresh pages."""
        if device.type != "cpu" or 2 * rows * width * 4 > CACHED_BUFFER_BYTES:
            return cls(rows, width, device)
        cached = getattr(_THREAD_BUFFERS, "last", None)
        if cached is None or cached.buffers[0].shape[1] != width or cached.buffers[0].shape[0] < rows:
            cached = _THREAD_BUFFERS.last = cls(rows, width, device)
        return cached


_THREAD_BUFFERS = threading.local()


class FeatureGraph:
    """Weights W = F·Fᵀ from node features ``features`` (n, f) float32, non-negative; W is never built
    except for small sub-graphs. Sub-graphs keep every feature column, so each row's squared norm,
    whether all features are positive and each node's start value carry over from the parent
    instead of being recomputed. ``buffers``/``offset``/``depth`` place a sub-graph in its root's
    ``SortBuffers`` (a root has none until its first split)."""

    directed = False

    def __init__(
        self,
        features: torch.Tensor,
        row_norms2: torch.Tensor | None = None,
        positive: bool | None = None,
        start: torch.Tensor | None = None,
        buffers: SortBuffers | None = None,
        offset: int = 0,
        depth: int = 0,
        column_sums: torch.Tensor | None = None,
    ) -> None:
        self.features = features.float()
        self.hint: torch.Tensor | None = None  # (n,) a guess at the Fiedler vector (``Split.hint``)
        self._degrees: torch.Tensor | None = None
        self._edge_stats: tuple[float, int] | None = None
        self._row_norms2 = row_norms2
        self._positive = positive
        self._start = start
        self._buffers = buffers
        self._offset = offset
        self._depth = depth
        self._column_sums = column_sums  # (f,) float64 Σ_i F_i, when the parent's sort gave it
        # (order, the features in that order, their running block sums) from prefix_association
        self._sorted: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

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
            self._positive = bool(self.features.amin() > 0)
        return self._positive

    def start_values(self) -> torch.Tensor:
        """(n,) float32 start vector of the iterative solvers: the root's ``start_vector`` at these nodes,
        so a sub-graph's solve does not depend on the order of its rows."""
        if self._start is None:
            self._start = start_vector(self.size, self.device)
        return self._start

    def children(self, split: Split) -> tuple[torch.Tensor, FeatureGraph, torch.Tensor, FeatureGraph]:
        """The two sides of ``split`` (made by ``best_split`` on this graph): (lower nodes (k,) int64 in the
        order of the Fiedler vector, its sub-graph, upper nodes, its sub-graph). The sub-graphs view the
        rows that ``prefix_association`` sorted; nothing is copied."""
        if self._sorted is None or self._sorted[0] is not split.order:
            raise ValueError("children() needs the split best_split() made on this graph")
        order, rows, running = self._sorted
        k = split.lower_size
        full = k // PREFIX_BLOCK  # the lower side's column sums from the block sums of the sort
        lower_sums = rows[full * PREFIX_BLOCK : k].double().sum(0)
        if full:
            lower_sums += running[:, full - 1]
        column_sums = (lower_sums, running[:, -1] - lower_sums)
        lower, upper = order[:k], order[k:]
        return (
            lower,
            self._side(lower, rows[:k], self._offset, column_sums[0], split.hint),
            upper,
            self._side(upper, rows[k:], self._offset + k, column_sums[1], split.hint),
        )

    def _side(
        self, nodes: torch.Tensor, rows: torch.Tensor, offset: int, column_sums: torch.Tensor, hint: torch.Tensor | None
    ) -> FeatureGraph:
        """The sub-graph of ``nodes`` whose features are ``rows`` at ``offset`` of the sort buffers."""
        side = FeatureGraph(
            rows,
            row_norms2=self.row_norms2[nodes],
            positive=self._positive,
            start=self.start_values()[nodes],
            buffers=self._buffers,
            offset=offset,
            depth=self._depth + 1,
            column_sums=column_sums,
        )
        side.hint = None if hint is None else hint[nodes]
        return side

    def degrees(self) -> torch.Tensor:
        """(n,) row sums F·(Fᵀ·1) (computed once)."""
        if self._degrees is None:
            if self._column_sums is None:
                self._column_sums = (self.features.T @ self.features.new_ones(self.size)).double()
            self._degrees = self.features @ self._column_sums.float()
        return self._degrees

    def in_degrees(self) -> torch.Tensor:
        return self.degrees()

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """W·x = F·(Fᵀ·x) for x (n,) or (n, b)."""
        return self.features @ (self.features.T @ x)

    def dense(self) -> torch.Tensor:
        return self.features @ self.features.T

    def edge_stats(self) -> tuple[float, int]:
        """(T, m) as ``DenseGraph.edge_stats`` (computed once); T = (‖Σ_i F_i‖² − Σ_i ‖F_i‖²)/2, with
        ‖Σ_i F_i‖² = Σ_i d_i from the degrees. Features without zeros give a complete graph; otherwise pairs with disjoint
        supports are not edges."""
        if self._edge_stats is None:
            self._edge_stats = self._count_edges()
        return self._edge_stats

    def _count_edges(self) -> tuple[float, int]:
        n = self.size
        total = float(self.degrees().double().sum() - self.row_norms2.sum()) / 2.0
        if self.positive:
            return total, n * (n - 1) // 2
        support = (self.features > 0).float()
        overlaps = torch.triu(support @ support.T, diagonal=1)
        return total, int((overlaps > 0).sum())

    def prefix_association(self, order: torch.Tensor) -> torch.Tensor:
        """(n,) float64: entry m−1 is Σ_{i,j ∈ A_m} W_ij = ‖C_m‖², C_m = Σ_{i∈A_m} F_i, for the first m
        nodes of ``order``. The rows are gathered in that order into the root's ``SortBuffers``,
        where ``children`` finds them."""
        if self._buffers is None:
            self._buffers = SortBuffers.for_graph(self.size, self.features.shape[1], self.device)
        target = self._buffers.buffers[self._depth % 2][self._offset : self._offset + self.size]
        torch.index_select(self.features, 0, order, out=target)
        norms, running = prefix_norms(target)
        self._sorted = (order, target, running)
        return norms


def prefix_norms(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """((n,) float64 ‖Σ_{i≤m} rows_i‖² for m = 0..n−1, (f, blocks) float64 running block sums: column b
    is the sum of the rows of blocks 0..b) for ``rows`` (n, f) float32.

    Blocked so that no (n, f) prefix array is built: within a block of B rows starting at offset O
    (the sum of all earlier rows, float64), ‖O + c_r‖² = ‖O‖² + 2·Σ_{i≤r} F_i·O + Σ_{i,j≤r} F_i·F_j,
    the last from the block's B × B Gram matrix. The last block is zero-padded in a copy (the rows
    after ``rows`` may belong to another sub-graph). Every product is a batched GEMM and every
    cumulative sum runs along contiguous memory: strided reductions cost 3–4 times as much.
    """
    n, width = rows.shape
    full = n // PREFIX_BLOCK
    parts = [rows[: full * PREFIX_BLOCK].view(full, PREFIX_BLOCK, width)] if full else []
    if n % PREFIX_BLOCK:
        tail = rows.new_zeros(1, PREFIX_BLOCK, width)
        tail[0, : n - full * PREFIX_BLOCK] = rows[full * PREFIX_BLOCK :]
        parts.append(tail)
    ones = rows.new_ones(1, 1, PREFIX_BLOCK)
    sums_t = torch.cat([torch.bmm(ones.expand(len(p), 1, PREFIX_BLOCK), p)[:, 0] for p in parts]).T
    sums_t = sums_t.contiguous().double()  # (f, blocks)
    running = sums_t.cumsum(1)
    offsets_t = running - sums_t  # (f, blocks): the sum of the rows before each block
    offset_norms = (offsets_t * offsets_t).sum(0)
    offsets = offsets_t.T.float()
    projections, grams, first = [], [], 0
    for p in parts:
        projections.append(torch.bmm(offsets[first : first + len(p), None, :], p.transpose(1, 2))[:, 0])
        grams.append(torch.bmm(p, p.transpose(1, 2)))
        first += len(p)
    projected = torch.cat(projections).double().cumsum(1)
    inner = torch.cat(grams).double().cumsum(1).cumsum(2).diagonal(dim1=1, dim2=2)
    return (offset_norms[:, None] + 2.0 * projected + inner).reshape(-1)[:n], running


Graph = DenseGraph | FeatureGraph


@dataclass(frozen=True)
class Split:
    """A two-way split of a graph's nodes: ``right`` (n,) bool marks B (the larger Fiedler values),
    with its NCut cost and its cut weight cut(A, B) + cut(B, A) (= 2·cut for symmetric W).
    ``order`` (n,) int64 sorts the nodes by the Fiedler vector; A is its first ``lower_size``.
    ``hint`` (n,) float32: the solver's guess at the next generalised eigenvector, which restricted
    to each side starts that side's solve (its Fiedler vector often resembles it), or None."""

    right: torch.Tensor
    ncut: float
    cut: float
    order: torch.Tensor
    lower_size: int
    hint: torch.Tensor | None = None


def start_vector(n: int, device: torch.device) -> torch.Tensor:
    """A fixed pseudo-random (n,) float32 vector, drawn on the CPU so every device starts alike."""
    generator = torch.Generator().manual_seed(START_SEED)
    return torch.rand(n, generator=generator).to(device) - 0.5


def fixed_sign(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the sign that makes its largest-magnitude entry positive."""
    return x if x[x.abs().argmax()] >= 0 else -x


@dataclass(frozen=True)
class Fiedler:
    """A graph's Fiedler vector ``vector`` (n,) float32 with its eigenvalue λ = ``value``, and
    ``next_vector`` (n,) float32, the solver's approximation of the next generalised eigenvector
    (None when it had none)."""

    vector: torch.Tensor
    value: float
    next_vector: torch.Tensor | None


def fiedler(graph: Graph, max_steps: int = 200, tolerance: float = 1e-5) -> Fiedler:
    """Second generalised eigenpair of (D − W)·x = λ·D·x for symmetric W.

    Solved in the symmetric normalised form M = D^-½·W·D^-½ (eigenvalue μ = 1 − λ, y = D^½·x):
    the top eigenvector of M, D^½·1, is known and deflated; the largest remaining eigenpair comes
    from a dense eigendecomposition for n ≤ ``DENSE_EIGEN_LIMIT`` (``FEATURE_DENSE_EIGEN_LIMIT`` for a
    ``FeatureGraph``), else from Lanczos with full reorthogonalisation (matrix-free, restarted until
    the residual ‖M·y − μ·y‖ ≤ ``tolerance``), started from ``graph.hint`` where there is one (a
    warm start: fewer steps, the same converged vector). The sign is fixed (largest |x_i| positive).
    """
    n = graph.size
    degrees = graph.degrees().clamp_min(torch.finfo(torch.float32).tiny)
    inv_sqrt = degrees.rsqrt()
    top = degrees.sqrt()
    top = top / top.norm()
    if n <= (DENSE_EIGEN_LIMIT if isinstance(graph, DenseGraph) else FEATURE_DENSE_EIGEN_LIMIT):
        normalised = inv_sqrt[:, None] * graph.dense() * inv_sqrt[None, :]
        normalised = normalised - top[:, None] * top[None, :]
        values, vectors = torch.linalg.eigh(0.5 * (normalised + normalised.T))
        mu, y, following = float(values[-1]), vectors[:, -1], vectors[:, -2] if n > 2 else None
    else:
        mu, y, following = lanczos_largest(
            lambda v: inv_sqrt[:, None] * graph.matmul(inv_sqrt[:, None] * v),
            top,
            max_steps,
            tolerance,
            start=warm_start(graph, degrees),
        )
    next_vector = None if following is None else inv_sqrt * following
    return Fiedler(fixed_sign(inv_sqrt * y), 1.0 - mu, next_vector)


def fiedler_vector(graph: Graph, max_steps: int = 200, tolerance: float = 1e-5) -> tuple[torch.Tensor, float]:
    """``fiedler``'s ((n,) float32 x, λ)."""
    solution = fiedler(graph, max_steps, tolerance)
    return solution.vector, solution.value


def warm_start(graph: Graph, degrees: torch.Tensor) -> torch.Tensor:
    """(n,) Lanczos start in the normalised form: D^½·``graph.hint`` (unit) plus ``HINT_NOISE`` of the seeded
    start vector, or the seeded start vector alone when the graph has no hint."""
    seeded = graph.start_values()
    if graph.hint is None:
        return seeded
    guess = degrees.sqrt() * graph.hint
    return guess / guess.norm().clamp_min(torch.finfo(torch.float32).tiny) + HINT_NOISE * seeded / seeded.norm()


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
    matmul,
    deflated: torch.Tensor,
    max_steps: int,
    tolerance: float,
    restarts: int = 4,
    start: torch.Tensor | None = None,
) -> tuple[float, torch.Tensor, torch.Tensor | None]:
    """Largest eigenpair of a symmetric operator on the complement of the unit vector ``deflated`` (n,).

    ``matmul`` maps (n, b) → (n, b). Lanczos with full reorthogonalisation for at most
    ``max_steps`` steps per cycle from ``start`` (n,) (default ``start_vector``), restarted from the
    best Ritz vector up to ``restarts`` times. Returns (eigenvalue, (n,) unit eigenvector, the
    unit Ritz vector of the second-largest Ritz value of the last cycle, or None after one step).
    """
    n = deflated.shape[0]
    steps = min(max_steps, n - 1)
    q = start_vector(n, deflated.device) if start is None else start
    value, following = 0.0, None
    for _ in range(restarts + 1):
        value, q, following, residual = _lanczos_cycle(matmul, deflated, q, steps, tolerance)
        if residual <= tolerance:
            break
    return value, q, following


def _lanczos_cycle(
    matmul, deflated: torch.Tensor, start: torch.Tensor, steps: int, tolerance: float
) -> tuple[float, torch.Tensor, torch.Tensor | None, float]:
    """One Lanczos cycle from ``start``: (top Ritz value, its unit Ritz vector, the unit Ritz vector of
    the second-largest Ritz value or None, residual norm)."""
    n = deflated.shape[0]
    # row 0: the deflated vector; rows 1..j+1: the Krylov basis (rows are written before they are read)
    rows = torch.empty(steps + 2, n, dtype=torch.float32, device=deflated.device)
    rows[0] = deflated
    rows[1] = _orthonormalise(start, rows[:1])
    basis = rows[1:]
    diagonal: list[float] = []
    off_diagonal: list[float] = []
    for j in range(steps):
        w = matmul(basis[j][:, None])[:, 0]
        diagonal.append(float(basis[j] @ w))
        w = _orthonormalise(w, rows[: j + 2], normalise=False)
        beta = float(w.norm())
        last = j + 1 == steps or beta < 1e-7
        # every step checks convergence: the tridiagonal eigenproblem is far cheaper than a mat-vec
        value, ritz = _top_ritz(diagonal, off_diagonal)
        residual = beta * abs(float(ritz[-1, -1]))
        if last or residual <= tolerance:
            vectors = ritz.T.to(basis) @ basis[: j + 1]  # (≤ 2, n)
            vectors = vectors / vectors.norm(dim=1, keepdim=True)
            return value, vectors[-1], vectors[0] if len(vectors) > 1 else None, residual
        off_diagonal.append(beta)
        basis[j + 1] = w / beta
    raise AssertionError("unreachable: the last step returns")


def _orthonormalise(v: torch.Tensor, against: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """``v`` (n,) minus its projection on the orthonormal rows of ``against`` (twice, for stability)."""
    for _ in range(2):
        v = v - (against @ v) @ against
    return v / v.norm() if normalise else v


def _top_ritz(diagonal: list[float], off_diagonal: list[float]) -> tuple[float, torch.Tensor]:
    """Largest eigenvalue of the symmetric tridiagonal matrix (float64, CPU) and the eigenvectors of
    its two largest eigenvalues as columns (k, ≤ 2), ascending (the largest last)."""
    k = len(diagonal)
    tridiagonal = torch.diag(torch.tensor(diagonal, dtype=torch.float64))
    if k > 1:
        beta = torch.tensor(off_diagonal[: k - 1], dtype=torch.float64)
        tridiagonal += torch.diag(beta, 1) + torch.diag(beta, -1)
    values, vectors = torch.linalg.eigh(tridiagonal)
    return float(values[-1]), vectors[:, -2:]


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
    x = graph.start_values()
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
    cut = float(cut_ab[position] + cut_ba[position])
    return Split(right=right, ncut=float(costs[position]), cut=cut, order=order, lower_size=position + 1)
