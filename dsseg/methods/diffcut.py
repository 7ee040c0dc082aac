"""DiffCut (Couairon et al., NeurIPS 2024): recursive Normalised Cuts on the output features of one
self-attention block, the way its released code (``diffcut/recursive_normalized_cut.py``) runs.

Per image, from features F (N, C) on an (h, w) grid:
1. W = ((S − min S)/(max S − min S))^α with S the cosine similarities of the feature rows, the
   min and max over the whole matrix (α = 10);
2. recursive two-way NCut: the generalised Fiedler vector y of each (sub-)graph, sign fixed so its
   largest |y_i| is positive; candidate splits {y > t} for 100 values t from 0.99·min y to
   0.99·max y; the lowest NCut cost kept when below τ (0.5 for SSD-1B, 0.2 for SD 1.4), and both
   sides split again on W restricted to them (not rescaled);
3. each leaf's embedding is the mean of its unit feature rows; every cell of the latent grid
   (``assign_factor`` 4 cells per feature cell: 128² for a 1024² input, where the released code
   assigns) takes the leaf with the largest dot product between that embedding and the cell's
   bilinearly upsampled unit feature;
4. optionally PAMR on the one-hot masks with the image at that grid (10 iterations, dilations 1, 2,
   4, 8), the arg-max, then a 3×3 median filter of the labels, as its evaluation script does;
5. labels repeated to the model input's pixels (``upsample_factor`` 8).

Extraction (its ``tools/ldm.py``): the output of the last self-attention layer of the down path
(``feature_layer="down:-1"``: ``down_blocks[2]`` in SD 1.x and SDXL, at 1/32 of the image), one
UNet step at t = 50 on the seeded-noised latent of the image squashed to 1024², the empty prompt.

Reading: the released code marks explored nodes by zeroing their affinities and then, below the
root, drops every node with any zero affinity. That also drops the nodes whose affinity is zero
by nature (the least similar pair, which the min–max scaling sets to exactly 0, and affinities that
underflow float32 after ^α), which then always fall to the lower side of later splits. dsseg keeps
them: each sub-graph is exactly the nodes of its side (``diffcut_reference`` can do either).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import median_filter

from dsseg.methods.base import MethodResult
from dsseg.methods.ncut import Hierarchy, NCutConfig, member_means, recursive_ncut, scaled_cosine_graph, unit_rows
from dsseg.methods.pamr import pamr
from dsseg.model.extract import AttentionBundle
from dsseg.timing import StageTimer

CANDIDATE_SPAN = 0.99  # the released code's candidate range: 0.99·min y … 0.99·max y


@dataclass(frozen=True)
class DiffCutConfig:
    """DiffCut parameters. ``tau``: the NCut cost below which a split is kept (0.5 for SSD-1B, 0.2
    for SD 1.4 in the paper). ``alpha``: the affinity exponent. ``split_candidates``: split values
    tried per cut. ``max_depth``: deepest split (the released code has no limit; ours stops at 30).
    ``assign_factor``: cells of the assignment grid per feature cell along each side (4: the latent
    grid). ``pamr_iterations`` (0 = off) and ``pamr_dilations``: step 4. ``upsample_factor``: pixels
    per assignment cell in the label map (8: the model input's pixels)."""

    tau: float = 0.5
    alpha: float = 10.0
    split_candidates: int = 100
    max_depth: int = 30
    assign_factor: int = 4
    pamr_iterations: int = 0
    pamr_dilations: tuple[int, ...] = (1, 2, 4, 8)
    upsample_factor: int = 8

    def __post_init__(self) -> None:
        if self.tau <= 0 or self.alpha <= 0:
            raise ValueError(f"tau and alpha must be > 0; got {self.tau}, {self.alpha}")
        if min(self.split_candidates, self.assign_factor, self.upsample_factor) < 1:
            raise ValueError("split_candidates, assign_factor and upsample_factor must be ≥ 1")
        object.__setattr__(self, "pamr_dilations", tuple(int(d) for d in self.pamr_dilations))
        if self.pamr_iterations < 0 or not self.pamr_dilations or min(self.pamr_dilations) < 1:
            raise ValueError("pamr_iterations must be ≥ 0 and pamr_dilations positive")
        self.cut_config()  # validates max_depth

    def cut_config(self) -> NCutConfig:
        """The recursive-NCut settings that run DiffCut's cut."""
        return NCutConfig(
            graph="diffcut", stopping="threshold", threshold=self.tau, alpha=self.alpha, min_segment_size=1,
            max_depth=self.max_depth, split_candidates=self.split_candidates, candidate_span=CANDIDATE_SPAN,
        )  # fmt: skip


def diffcut_partition(features: torch.Tensor, config: DiffCutConfig) -> Hierarchy:
    """Steps 1–2 on one image's features (N, C): the leaves of the recursive cut."""
    return recursive_ncut(scaled_cosine_graph(features, config.alpha), config.cut_config())


def assign_cells(
    features: torch.Tensor, grid: tuple[int, int], assignment: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Step 3: features (N, C) on ``grid`` (h, w) and each node's leaf (N,) → (H, W) int64 labels at
    ``size``: per cell, the leaf whose mean unit feature has the largest dot product with the
    cell's bilinearly upsampled (half-pixel centres) unit feature."""
    rows = unit_rows(features.float())
    leaves = int(assignment.max()) + 1
    embeddings = member_means(rows, assignment, leaves)  # (S, C)
    scores = (rows @ embeddings.T).T.reshape(1, leaves, *grid)  # dot products are linear: upsample them
    scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)[0]
    return scores.argmax(dim=0)


def diffcut_labels(
    features: torch.Tensor, grid: tuple[int, int], config: DiffCutConfig
) -> tuple[torch.Tensor, Hierarchy]:
    """Steps 1–3 on one image's features (N, C) on ``grid`` (h, w) → ((h·a, w·a) int64 labels at
    the assignment grid, a = ``assign_factor``, and the cut's hierarchy)."""
    hierarchy = diffcut_partition(features, config)
    size = (grid[0] * config.assign_factor, grid[1] * config.assign_factor)
    return assign_cells(features, grid, hierarchy.assignment, size), hierarchy


def refine_labels(labels: torch.Tensor, image: torch.Tensor, config: DiffCutConfig) -> torch.Tensor:
    """Step 4: labels (H, W) and the image (1, 3, h', w') in [-1, 1] → PAMR on the one-hot masks
    of the labels present, their arg-max, then a 3×3 median filter (edges: nearest), (H, W) int64."""
    present = torch.unique(labels)
    masks = (labels[None] == present[:, None, None]).float()[None]  # (1, S, H, W)
    image = F.interpolate(image.float(), size=tuple(labels.shape), mode="bilinear", align_corners=False)
    refined = present[pamr(image.to(masks.device), masks, config.pamr_iterations, config.pamr_dilations)[0].argmax(0)]
    filtered = median_filter(refined.cpu().numpy(), size=3, mode="nearest")
    return torch.from_numpy(np.ascontiguousarray(filtered)).to(labels.device)


def segment_diffcut(
    bundle: AttentionBundle, config: DiffCutConfig, timer: StageTimer | None = None
) -> list[MethodResult]:
    """DiffCut on every image of ``bundle`` (its ``features``): labels at the model input's pixels,
    each segment with its parent heap index in the cut's tree."""
    if bundle.features is None or bundle.feature_grid is None:
        raise ValueError(
            "diffcut reads the output features of one self-attention layer: keep feature_layer set ('down:-1')"
        )
    timer = timer or StageTimer()
    results = []
    for index in range(len(bundle)):
        with timer.stage("segment"):
            labels, hierarchy = diffcut_labels(bundle.features[index], bundle.feature_grid, config)
            if config.pamr_iterations:
                if bundle.images is None:
                    raise ValueError("pamr_iterations needs the image: segment images, not cached features")
                labels = refine_labels(labels, bundle.images[index : index + 1], config)
            labels = labels.repeat_interleave(config.upsample_factor, 0).repeat_interleave(config.upsample_factor, 1)
        results.append(MethodResult(labels, parents=list(hierarchy.parents)))
    return results
