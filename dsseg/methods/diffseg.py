"""DiffSeg (Tian et al., CVPR 2024): iterative KL merging of aggregated self-attention.

1. Anchors: a regular grid of query positions (16×16 on a 64×64 latent: rows and columns
   1, 5, …, 61, the official sampling grid).
2. Iteration 0: each anchor's attention map is compared with all N maps by symmetric KL,
   ½·(KL(p‖q) + KL(q‖p)); its proposal is the mean of the maps closer than τ.
3. Iterations 1…: greedily, in order, each proposal not yet absorbed becomes the mean of all
   proposals (absorbed ones included, as in the official code) closer than τ, and marks them absorbed.
4. Optional k-means refinement of the proposals over the N maps.
5. Proposals are upsampled ×8 (bilinear) and each pixel takes the arg-max proposal.

All pairwise KLs come from matrix products: KL_sym(p, q) = ½·(Σp log p + Σq log q − p·log q −
q·log p), with log guarded at the smallest normal float32 instead of the official code's
float16 (which produces NaN and silently drops merges). Same code on CPU and GPU.
"""

from __future__ import annotations

import torch

from dsseg.methods.aggregate import aggregate_self_attention
from dsseg.methods.base import MethodResult, memoised
from dsseg.methods.configs import DiffSegConfig
from dsseg.methods.upsample import upsample_argmax
from dsseg.model.attention import Grid
from dsseg.model.extract import AttentionBundle
from dsseg.timing import StageTimer

LOG_FLOOR = torch.finfo(torch.float32).tiny


def anchor_indices(grid: Grid, spacing: int = 4) -> torch.Tensor:
    """Flat query indices of the anchor grid, row-major: (A,) int64.

    Per axis of length L: n = L // spacing points, step (L−1)//(n−1), centred (the official
    grid: 1, 5, …, 61 for L = 64).
    """
    axes = []
    for length in grid:
        count = max(1, length // spacing)
        step = (length - 1) // (count - 1) if count > 1 else 0
        start = (length - 1 - step * (count - 1)) // 2
        axes.append(torch.arange(count) * step + start)
    rows, cols = torch.meshgrid(axes[0], axes[1], indexing="ij")
    return (rows * grid[1] + cols).reshape(-1)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Pairwise ½(KL(p‖q) + KL(q‖p)) between rows: p (A, N), q (M, N) distributions → (A, M)."""
    log_p = p.clamp_min(LOG_FLOOR).log()
    log_q = q.clamp_min(LOG_FLOOR).log()
    neg_entropy_p = (p * log_p).sum(-1)
    neg_entropy_q = (q * log_q).sum(-1)
    cross = p @ log_q.T + log_p @ q.T
    return 0.5 * (neg_entropy_p[:, None] + neg_entropy_q[None, :] - cross)


def anchor_distances(attention: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Symmetric KL of each anchor's row to every row: attention (N, N), anchors (A,) → (A, N).
    Independent of τ, so a re-segmentation with a new threshold can reuse it."""
    return symmetric_kl(attention[anchors], attention)


def merge_anchors(
    attention: torch.Tensor, anchors: torch.Tensor, threshold: float, distances: torch.Tensor | None = None
) -> torch.Tensor:
    """Iteration 0: attention (N, N) rows, anchors (A,) → proposals (A, N), each the mean of the
    rows within ``threshold`` of its anchor row (``distances``: ``anchor_distances``, computed when None)."""
    if distances is None:
        distances = anchor_distances(attention, anchors)
    close = (distances < threshold).to(attention.dtype)
    close[torch.arange(len(anchors)), anchors] = 1.0  # an anchor always matches itself
    return (close @ attention) / close.sum(-1, keepdim=True)


def merge_proposals(proposals: torch.Tensor, threshold: float) -> torch.Tensor:
    """Iterations ≥ 1: greedy merge of proposals (K, N) → (K', N), K' ≤ K.

    Visiting proposals in order, each not yet absorbed becomes the mean of every proposal
    within ``threshold`` of it (absorbed ones included) and marks those absorbed.
    """
    close = (symmetric_kl(proposals, proposals) < threshold).cpu()
    close.fill_diagonal_(True)
    absorbed = torch.zeros(len(proposals), dtype=torch.bool)
    groups = []
    for index in range(len(proposals)):  # sequential by definition; K ≤ number of anchors
        if absorbed[index]:
            continue
        groups.append(close[index])
        absorbed |= close[index]
    members = torch.stack(groups).to(proposals.device, proposals.dtype)
    return (members @ proposals) / members.sum(-1, keepdim=True)


def kmeans_refine(attention: torch.Tensor, centres: torch.Tensor, iterations: int) -> torch.Tensor:
    """Lloyd's k-means of the rows of ``attention`` (N, N) from ``centres`` (K, N); empty
    clusters are dropped. Returns the final cluster means (K', N)."""
    assignment = None
    for _ in range(iterations):
        distances = (centres * centres).sum(-1)[None, :] - 2.0 * attention @ centres.T
        new_assignment = distances.argmin(-1)
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        one_hot = torch.zeros(len(centres), len(attention), dtype=attention.dtype, device=attention.device)
        one_hot[assignment, torch.arange(len(attention), device=attention.device)] = 1.0
        counts = one_hot.sum(-1)
        centres = (one_hot[counts > 0] @ attention) / counts[counts > 0, None]
    return centres


def diffseg_proposals(
    attention: torch.Tensor, grid: Grid, config: DiffSegConfig, distances: torch.Tensor | None = None
) -> torch.Tensor:
    """Aggregated attention (N, N) of one image → merged proposals (K, N) float32 (``distances``:
    the anchors' ``anchor_distances`` when already known)."""
    attention = attention.float()
    anchors = anchor_indices(grid, config.anchor_spacing).to(attention.device)
    proposals = merge_anchors(attention, anchors, config.kl_threshold[0], distances)
    for threshold in config.kl_threshold[1:]:
        proposals = merge_proposals(proposals, threshold)
    if config.refine:
        proposals = kmeans_refine(attention, proposals, config.kmeans_iterations)
    return proposals


def segment_diffseg(
    bundle: AttentionBundle, config: DiffSegConfig, timer: StageTimer | None = None
) -> list[MethodResult]:
    """DiffSeg on every image of ``bundle``: label maps at (f·H, f·W) for the latent grid (H, W)
    and upsampling factor f (512² for SD at 512²). Stages timed: aggregate, segment. With a memo on
    the bundle, the aggregation and the anchors' KL distances are kept (they do not depend on τ)."""
    timer = timer or StageTimer()
    levels = (config.resolutions, config.resolution_weights)
    with timer.stage("aggregate"):
        aggregated, grid = memoised(
            bundle, ("aggregate", *levels), lambda: aggregate_self_attention(bundle.self_attention, *levels)
        )
    results = []
    with timer.stage("segment"):
        anchors = anchor_indices(grid, config.anchor_spacing).to(aggregated.device)
        for index, attention in enumerate(aggregated):
            distances = memoised(
                bundle,
                ("anchor_distances", index, *levels, config.anchor_spacing),
                lambda attention=attention: anchor_distances(attention.float(), anchors),
            )
            proposals = diffseg_proposals(attention, grid, config, distances)
            labels = upsample_argmax(proposals.reshape(-1, *grid), config.upsample_factor)
            results.append(MethodResult(labels=labels))
    return results
