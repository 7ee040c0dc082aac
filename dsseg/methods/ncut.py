"""Diffusing, Walking and Cutting (Ivanova et al.): recursive Normalised Cuts on self-attention.

1. Transition matrix: the aggregated self-attention P (N, N), row-stochastic (DiffSeg's
   aggregation over the chosen resolutions, default the three largest: 64, 32, 16 at 512²).
2. Power walk: Pᵏ (k-step transition probabilities, by repeated squaring); k is the
   granularity knob (higher k, coarser segments).
3. Graph: ``random_walk`` — NCut directly on the directed Pᵏ; ``adjacency`` — the symmetric
   A = Pᵏ·(Pᵏ)ᵀ (``dot``, default) or cosine similarity of the rows of Pᵏ (``cosine``), both kept
   in factored form; ``diffcut`` — DiffCut's ((cos − min)/(max − min))^α.
4. Recursive two-way NCut (Shi & Malik): Fiedler vector of each sub-graph, the lowest-NCut split
   along it, recursion on both sides while the stopping rule accepts the split.
5. Stopping: ``manc_ncut`` (default, no threshold to tune) accepts a split whose NCut cost is
   below the sub-graph's MAN-C threshold n·T/(2m) (n nodes, T total undirected edge weight,
   m edges; T/(n−1) for dense graphs); ``manc_mincut`` compares the scaled min-cut cut(A,B)/T
   with it instead; ``threshold`` compares the NCut cost with a fixed ``threshold``. A minimum
   segment size and a maximum depth always apply.
6. Hierarchy: segments are the leaves of the split tree; each carries its parent's heap index
   (root 1, children of node v are 2v and 2v+1), so the tree can be cut at any depth later
   (``cut_hierarchy``).
7. Upsampling: ``cosine`` (the paper) gives each pixel the segment whose mean attention
   distribution is most cosine-similar to the pixel's bilinearly upsampled distribution;
   ``nearest`` repeats latent cells.

The MAN-C threshold depends on the weights' scale, which the paper leaves to two statements:
heads are summed, and P is row-stochastic. The reading taken here (and by the presets) is the one
where both hold: the head mean (the sum renormalised), so every row of P sums to 1 and A is built
from that P. The mean degree is then ≈ 1 and the threshold at the root ≈ 0.5 (``jobs/manc_study.py``
measures 0.505 for ``dot`` and 0.499 for ``random_walk`` on planted attention); in a sub-graph it
is about half the mean fraction of walk mass that stays inside. Summed heads without the
renormalisation would scale A, and the threshold, by heads² (``dot``). With ``cosine``/``diffcut``
weights the threshold has no such meaning; use ``threshold`` there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from dsseg.methods.aggregate import aggregate_self_attention, level_size
from dsseg.methods.base import MethodResult, memoised
from dsseg.methods.configs import DEFAULT_LEVELS, NCutConfig
from dsseg.methods.spectral import (
    DenseGraph,
    FeatureGraph,
    Graph,
    Split,
    best_split,
    fiedler,
    laplacian_fiedler_vector,
    random_walk_vector,
)
from dsseg.methods.upsample import upsample_argmax_index
from dsseg.model.attention import Grid
from dsseg.model.extract import AttentionBundle
from dsseg.timing import StageTimer


@dataclass(frozen=True)
class Hierarchy:
    """The leaves of a recursive NCut over N nodes.

    ``assignment``: (N,) int64 leaf index per node, leaves numbered depth-first (left = lower
    Fiedler values first). ``parents``: per leaf, the heap index of the node it was split from
    (None for an unsplit root). ``heaps``: per leaf, its own heap index (root 1; the lower side of
    node v is 2v, the upper 2v + 1).
    """

    assignment: torch.Tensor
    parents: list[int | None]
    heaps: list[int] = field(default_factory=list)

    @property
    def num_leaves(self) -> int:
        return len(self.parents)


def power_walk(transition: torch.Tensor, power: int) -> torch.Tensor:
    """Pᵏ for P (N, N) by repeated squaring (⌊log₂ k⌋ squarings and popcount(k) − 1 further products); rows still sum to 1."""
    return transition if power == 1 else torch.linalg.matrix_power(transition, power)


def build_graph(walk: torch.Tensor, config: NCutConfig) -> Graph:
    """The graph to cut from the walk matrix Pᵏ (N, N), per ``config.graph``."""
    if config.graph == "random_walk":
        return DenseGraph(walk, directed=True)
    if config.graph == "dot":
        return FeatureGraph(walk)
    if config.graph == "cosine":
        return FeatureGraph(unit_rows(walk))
    return scaled_cosine_graph(walk, config.alpha)


def unit_rows(features: torch.Tensor) -> torch.Tensor:
    """(N, C) rows scaled to unit length (zero rows stay zero)."""
    return features / features.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def scaled_cosine_graph(features: torch.Tensor, alpha: float) -> DenseGraph:
    """DiffCut's graph over the rows of ``features`` (N, C): W = ((S − min S)/(max S − min S))^α, S
    the cosine similarities, min and max over the whole matrix."""
    return DenseGraph(scaled_cosine(features).pow(alpha))


def scaled_cosine(features: torch.Tensor) -> torch.Tensor:
    """(N, N) float32 (S − min S)/(max S − min S), S the cosine similarities of the rows of
    ``features`` (N, C), min and max over the whole matrix: DiffCut's affinity before the power α."""
    rows = unit_rows(features.float())
    similarity = rows @ rows.T
    low, high = similarity.min(), similarity.max()
    return (similarity - low) / (high - low).clamp_min(torch.finfo(torch.float32).tiny)


def manc_threshold(nodes: int, total: float, edges: int) -> float:
    """MAN-C threshold n·T/(2m) for n nodes, total undirected edge weight T and m edges (T/(n−1)
    for a complete graph)."""
    return nodes * total / (2 * edges) if edges else 0.0


# A split is not formed when the Fiedler eigenvalue λ₂ exceeds the stopping rule's NCut limit by this
# much: every split's NCut is ≥ λ₂ (Shi & Malik: NCut is the Rayleigh quotient of a vector ⊥ D·1), so
# none could be kept. The margin covers the solver's error in λ₂ (its residual tolerance is 1e-5).
SPECTRAL_BOUND_MARGIN = 1e-4


def ncut_limit(graph: Graph, config: NCutConfig) -> float | None:
    """The NCut cost below which ``config``'s stopping rule keeps a split of ``graph``, or None when the
    rule compares something else (``manc_mincut``) or the graph has no edge weight."""
    if config.stopping == "threshold":
        return config.threshold
    if config.stopping == "manc_ncut":
        total, edges = graph.edge_stats()
        return manc_threshold(graph.size, total, edges) if total > 0 else None
    return None


def accept_split(graph: Graph, split: Split, config: NCutConfig) -> bool:
    """Whether ``config``'s stopping rule keeps ``split`` of ``graph``."""
    if config.stopping != "manc_mincut":
        limit = ncut_limit(graph, config)
        return limit is not None and split.ncut < limit
    total, edges = graph.edge_stats()
    if total <= 0:
        return False
    # undirected cut = (cut(A,B) + cut(B,A)) / 2, scaled by the total weight
    return (split.cut / 2) / total < manc_threshold(graph.size, total, edges)


def two_way_split(graph: Graph, config: NCutConfig) -> Split | None:
    """The lowest-NCut split of ``graph`` along its Fiedler vector (random walk: the deflated walk's
    second eigenvector), or None when no split leaves ``min_segment_size`` nodes on both sides."""
    if graph.size < 2 * config.min_segment_size:
        return None
    if isinstance(graph, DenseGraph) and graph.directed:
        vector, _ = random_walk_vector(graph, config.walk_iterations, config.eigen_tolerance)
    elif config.eigensolver == "dense_laplacian":
        vector = laplacian_fiedler_vector(graph)
    else:
        solution = fiedler(graph, tolerance=config.eigen_tolerance)
        limit = ncut_limit(graph, config)
        if limit is not None and solution.value - SPECTRAL_BOUND_MARGIN >= limit:
            return None  # every split's NCut is ≥ λ₂ ≥ the limit: none would be kept, so none is formed
        split = best_split(
            graph, solution.vector, config.min_segment_size, config.split_candidates, config.candidate_span
        )
        return None if split is None else replace(split, hint=solution.next_vector)
    return best_split(graph, vector, config.min_segment_size, config.split_candidates, config.candidate_span)


def recursive_ncut(graph: Graph, config: NCutConfig) -> Hierarchy:
    """Split ``graph`` recursively (depth first, left side first) while the stopping rule accepts.

    With ``drop_zero_rows`` each cut below the root sees only the side's nodes whose row of the
    whole W holds no zero; the others join the cut's lower side (see ``NCutConfig``)."""
    device = graph.device
    assignment = torch.zeros(graph.size, dtype=torch.int64, device=device)
    parents: list[int | None] = []
    heaps: list[int] = []
    dropped = zero_rows(graph) if config.drop_zero_rows else None
    every = torch.arange(graph.size, device=device)
    # (nodes, the nodes that are sub's rows in its order, sub, heap index, depth); nodes ⊇ rows
    stack: list[tuple[torch.Tensor, torch.Tensor, Graph, int, int]] = [(every, every, graph, 1, 0)]
    while stack:
        nodes, rows, sub, heap, depth = stack.pop()
        split = two_way_split(sub, config) if depth < config.max_depth else None
        if split is not None and accept_split(sub, split, config):
            lower_local, lower, upper_local, upper = sub.children(split)
            upper_nodes = upper_rows = rows[upper_local]
            lower_rows = rows[lower_local]
            in_upper = torch.zeros(graph.size, dtype=torch.bool, device=device)
            in_upper[upper_nodes] = True
            if dropped is not None and depth == 0:  # dropped nodes leave the cuts below the root
                kept_lower, kept_upper = ~dropped[lower_rows], ~dropped[upper_rows]
                lower, lower_rows = sub.subgraph(lower_local[kept_lower]), lower_rows[kept_lower]
                upper, upper_rows = sub.subgraph(upper_local[kept_upper]), upper_rows[kept_upper]
            stack.append((upper_nodes, upper_rows, upper, 2 * heap + 1, depth + 1))
            stack.append((nodes[~in_upper[nodes]], lower_rows, lower, 2 * heap, depth + 1))
            continue
        assignment[nodes] = len(parents)
        parents.append(heap // 2 if heap > 1 else None)
        heaps.append(heap)
    return Hierarchy(assignment=assignment, parents=parents, heaps=heaps)


def zero_rows(graph: Graph) -> torch.Tensor:
    """(n,) bool: the nodes whose row of W holds a zero (a dense graph's; DiffCut's zero-row rule)."""
    if not isinstance(graph, DenseGraph):
        raise ValueError("drop_zero_rows needs explicit weights (graph='diffcut')")
    return (graph.weights == 0).any(dim=1)


def ncut_partition(transition: torch.Tensor, config: NCutConfig) -> Hierarchy:
    """Recursive NCut of one image's aggregated attention P (N, N): power walk, graph, splits."""
    return recursive_ncut(build_graph(power_walk(transition, config.power), config), config)


def cosine_scores(transition: torch.Tensor, assignment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """(S, N) maps whose bilinear upsampling ranks segments by cosine similarity per pixel.

    A pixel's distribution is p = Σ_q w_q·P_q (bilinear weights w over query rows q of P (N, N));
    its cosine with segment s's mean distribution m_s is (p·m̂_s)/‖p‖ with m̂_s = m_s/‖m_s‖. The
    ‖p‖ is shared by all segments, and p·m̂_s = Σ_q w_q·(P_q·m̂_s) is the bilinear upsampling of
    the map P·m̂_s: so the arg-max of the upsampled maps is the per-pixel cosine arg-max, exactly,
    without materialising per-pixel distributions.
    """
    return unit_rows(member_means(transition, assignment, num_segments)) @ transition.T


def member_means(rows: torch.Tensor, assignment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """(N, C) rows and each row's segment (N,) in 0..S−1 → (S, C): the mean row of every segment."""
    members = torch.zeros(num_segments, rows.shape[0], dtype=rows.dtype, device=rows.device)
    members[assignment, torch.arange(rows.shape[0], device=rows.device)] = 1.0
    return (members @ rows) / members.sum(1, keepdim=True)


def ncut_levels(grids: list[Grid], config: NCutConfig) -> tuple[int, ...]:
    """The resolutions to aggregate: ``config.resolutions`` or the three largest of ``grids``."""
    if config.resolutions is not None:
        return config.resolutions
    return tuple(sorted((level_size(g) for g in grids), reverse=True)[:DEFAULT_LEVELS])


def segment_ncut(bundle: AttentionBundle, config: NCutConfig, timer: StageTimer | None = None) -> list[MethodResult]:
    """Recursive NCut on every image of ``bundle``: label maps at (f·H, f·W) for the latent grid
    (H, W) and ``upsample_factor`` f, with each segment's parent heap index. Stages timed:
    aggregate, segment. With a memo on the bundle, the aggregation and each partition are kept."""
    timer = timer or StageTimer()
    levels = (ncut_levels(list(bundle.self_attention), config), config.resolution_weights)
    with timer.stage("aggregate"):
        aggregated, grid = memoised(
            bundle, ("aggregate", *levels), lambda: aggregate_self_attention(bundle.self_attention, *levels)
        )
    results = []
    with timer.stage("segment"):
        for index, transition in enumerate(aggregated):
            hierarchy = memoised(
                bundle,
                ("ncut_partition", index, config),
                lambda transition=transition: ncut_partition(transition, config),
            )
            if config.upsampling == "cosine":
                scores = cosine_scores(transition, hierarchy.assignment, hierarchy.num_leaves)
                winners = upsample_argmax_index(scores.reshape(-1, *grid), config.upsample_factor)
            else:
                cells = hierarchy.assignment.reshape(grid)
                winners = cells.repeat_interleave(config.upsample_factor, 0).repeat_interleave(
                    config.upsample_factor, 1
                )
            kept, labels = torch.unique(winners, sorted=True, return_inverse=True)
            parents = [hierarchy.parents[i] for i in kept.tolist()]
            results.append(MethodResult(labels=labels.reshape(winners.shape), parents=parents))
    return results


def tree_depth(parents: list[int | None]) -> int:
    """The depth of the deepest leaf of a split tree given by its leaves' parent heap indices (0: unsplit)."""
    return max((parent.bit_length() for parent in parents if parent is not None), default=0)


def cut_tree(labels: np.ndarray, parents: list[int | None], depth: int) -> tuple[np.ndarray, list[int | None]]:
    """Merge leaf segments into their ancestors at ``depth`` (0 = whole image, 1 = the first split, …).

    ``labels`` (H, W) segment ids indexing ``parents`` (heap indices, as ``MethodResult.parents``).
    Returns ((H, W) int64 labels, compact 0..S'−1 in order of first leaf; each new segment's parent
    heap index, None for the root).
    """
    if depth < 0:
        raise ValueError(f"depth must be ≥ 0; got {depth}")
    ids: dict[object, int] = {}
    new_parents: list[int | None] = []
    mapping = []
    for leaf, parent in enumerate(parents):
        parent_depth = -1 if parent is None else parent.bit_length() - 1
        if depth > parent_depth:  # the leaf itself survives the cut
            key, key_parent = ("leaf", leaf), parent
        else:  # its ancestor at ``depth``, a node of heap index ``node``
            node = parent >> (parent_depth - depth)
            key, key_parent = node, (node // 2 if node > 1 else None)
        if key not in ids:
            ids[key] = len(ids)
            new_parents.append(key_parent)
        mapping.append(ids[key])
    return np.asarray(mapping, dtype=np.int64)[labels], new_parents


def cut_result(result: MethodResult, depth: int) -> MethodResult:
    """A ``segment_ncut`` result with its split tree cut at ``depth`` (``cut_tree``): the merged labels
    and the new segments' parents; names and scores are dropped (they belonged to the leaves)."""
    labels, parents = cut_tree(result.labels.cpu().numpy(), result.parents, depth)
    return MethodResult(labels=torch.from_numpy(labels).to(result.labels.device), parents=parents)


def cut_hierarchy(labels: np.ndarray, parents: list[int | None], depth: int) -> np.ndarray:
    """The labels of ``cut_tree``: leaves merged into their ancestors at ``depth`` (0 = whole image)."""
    return cut_tree(labels, parents, depth)[0]
