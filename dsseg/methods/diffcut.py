"""DiffCut (Couairon et al., NeurIPS 2024): recursive Normalised Cuts on the output features of one
self-attention block, the way its released code (``diffcut/recursive_normalized_cut.py``) runs.

Per image, from features F (N, C) on an (h, w) grid:
1. W = ((S − min S)/(max S − min S))^α with S the cosine similarities of the feature rows, the
   min and max over the whole matrix (α = 10);
2. recursive two-way NCut: the generalised Fiedler vector y of each (sub-)graph from a dense
   float32 eigendecomposition of D^-½(D − W)D^-½ (as the code: ``spectral.laplacian_fiedler_vector``),
   sign fixed so its largest |y_i| is positive; candidate splits {y > t} for 100 values t from
   0.99·min y to 0.99·max y (float32 ``torch.linspace``); the lowest NCut cost kept when below τ
   (0.5 for SSD-1B, 0.2 for SD 1.4), and both sides split again on W restricted to them (not
   rescaled). Below the root, nodes whose row of W holds a zero are left out of the cuts and
   follow the lower sides (``drop_zero_rows``, see the reading below);
3. the leaves numbered as the code's ``assemble_clusters`` numbers them (``released_leaf_order``);
   each leaf's embedding is the mean of its unit feature rows; every cell of the latent grid
   (``assign_factor`` 4 cells per feature cell: 128² for a 1024² input, where the released code
   assigns) takes the leaf with the largest dot product between that embedding and the cell's
   bilinearly upsampled unit feature (ties: the lower id);
4. optionally PAMR (``dsseg.methods.pamr``) on the one-hot masks of the ids present, in id order,
   with the image in [0, 1] resized bilinearly to that grid (10 iterations, dilations 1, 2, 4,
   8), the arg-max, then a 3×3 median filter of those ids, as its evaluation script does (the
   median depends on the numbering: the released leaf order gives the released labels);
5. labels repeated to the model input's pixels (``upsample_factor`` 8).

Extraction (its ``tools/ldm.py``): the output of the last self-attention layer of the down path
(``feature_layer="down:-1"``: ``down_blocks[2]`` in SD 1.x and SDXL, at 1/32 of the image), one
UNet step at t = 50 on the seeded-noised latent of the image at 1024², the empty prompt. The
method's default squashes the image to 1024², as that extractor resizes whatever it is given; the
released evaluation first crops (``dataloader/iterator.py``), which the presets do with
``geometry="diffcut_crop"`` and score at 128² (``dsseg.evaluation.presets``).

Reading of the zero-row rule (``drop_zero_rows``, default True as released): the released code
marks explored nodes by zeroing their pairwise affinities and then, below the root, drops every
node whose affinity row (over all N columns) holds any zero. That removes the explored nodes, and
also the nodes whose affinity is zero by nature: the least similar pair, which the min–max scaling
sets to exactly 0, and affinities that underflow float32 after ^α. Such a node takes part in the
root cut only; below it, it is in no cut and so in no accepted mask, i.e. it ends in the leaf
reached from its root side by lower sides only. ``drop_zero_rows=False`` keeps it in every cut of
its side instead. Config ids: ``drop_zero_rows`` is an ordinary field (not ``ADDED``), so every
diffcut config id changed when it came (with the released eigensolver, leaf order and PAMR): no
output computed before can be taken for one computed now, whatever the field's value.

AutoSC (``tau="auto"``, the released ``diffcut/autosc.py`` at commit 4f99ed57, ``DiffCut_AutoSC``):
steps 1–2 give way to spectral clustering with the number of segments chosen by an eigengap
heuristic (``autosc_partition``): the same scaled cosine S, and for α = 1, 5, 10, 15 the full dense
float32 eigendecomposition of D^-½(D − S^α)D^-½; k is the position of the largest relative gap
(λ_k − mean λ₀..λ_k)/(mean + 10⁻⁶) of the α with the largest such gap (strictly larger: ties keep
the earlier α); then ``cluster_qr`` on the first k generalised eigenvectors D^-½·v. Reading: the
released code clusters the eigenvectors of the LAST α tried (15), not of the α that chose k (it
stores the chosen ones in a variable it never reads); ``autosc_vectors="last"`` (default) does
that, ``"chosen"`` takes the chosen α's. The segments are numbered by rank of their
``cluster_qr`` column and go through steps 3–5 unchanged: AutoSC's ``generate_masks`` is the
recursive cut's from the mask pooling on (step 3); no released script calls it, so PAMR (step 4)
follows it as it follows the cut in ``eval_diffcut.py``. The released code fails (an unbound name)
where no α has a gap above 0 (a graph without edges); we give one segment. AutoSC reads none of
``alpha``, ``split_candidates``, ``max_depth``, ``drop_zero_rows``: with ``tau="auto"`` the config
refuses values other than their defaults. Its segments are flat (no parents).

Deliberate differences from the released code: splits stop at ``max_depth`` 30 (the code has no
limit); NCut costs are evaluated in float64 from prefix sums (the code: the float32 Rayleigh
quotient, equal in exact arithmetic); leaves are ordered by exact integer codes (the code's float32
codes collide once they pass 2²⁴, from about 40 accepted splits on, and merge unrelated leaves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from scipy.ndimage import median_filter

from dsseg.methods.base import MethodResult
from dsseg.methods.configs import AutoSCVectors, DiffCutConfig
from dsseg.methods.ncut import Hierarchy, member_means, recursive_ncut, scaled_cosine, scaled_cosine_graph, unit_rows
from dsseg.methods.pamr import pamr
from dsseg.model.extract import AttentionBundle
from dsseg.timing import StageTimer


def diffcut_partition(features: torch.Tensor, config: DiffCutConfig) -> Hierarchy:
    """Steps 1–2 on one image's features (N, C): the leaves of the recursive cut, numbered in the
    released code's order (``released_leaf_order``)."""
    # The rows are normalised here and again in the graph, as the released code normalises them in
    # generate_masks and again in recursive_ncut: the same float32 affinities, bit for bit, so that
    # choices decided by rounding (which side of a two-node cut is the upper one) fall alike.
    hierarchy = recursive_ncut(scaled_cosine_graph(unit_rows(features.float()), config.alpha), config.cut_config())
    order = released_leaf_order(hierarchy.heaps)
    rank = torch.empty(len(order), dtype=torch.int64)
    rank[torch.tensor(order, dtype=torch.int64)] = torch.arange(len(order))
    return Hierarchy(
        assignment=rank.to(hierarchy.assignment.device)[hierarchy.assignment],
        parents=[hierarchy.parents[i] for i in order],
        heaps=[hierarchy.heaps[i] for i in order],
    )


AUTOSC_ALPHAS = (1.0, 5.0, 10.0, 15.0)  # diffcut/autosc.py's α, in the order it tries them
AUTOSC_EPSILON = 1e-6  # its eigengap's regulariser


@dataclass(frozen=True)
class AutoSCPartition:
    """The segments AutoSC finds on N nodes: ``assignment`` (N,) int64 ids 0..S−1, the ranks of the
    ``cluster_qr`` columns that some node takes (the released code numbers them so); ``clusters``:
    the number k of eigenvectors clustered (S ≤ k); ``alpha``: the α whose eigengap chose k."""

    assignment: torch.Tensor
    clusters: int
    alpha: float


def autosc_partition(features: torch.Tensor, vectors: AutoSCVectors = "last") -> AutoSCPartition:
    """AutoSC (``tau="auto"``) on one image's features (N, C), as ``diffcut/autosc.py`` runs it.

    S: the min–max scaled cosine of the (twice normalised) rows, as the recursive cut's. For each α
    of 1, 5, 10, 15: W = S^α, d = W·1, the dense float32 ``eigh`` of D^-½(D − W)D^-½ (eigenvalues
    λ₀ ≤ … ≤ λ_{N−1}, eigenvectors v mapped to x = D^-½·v), and the gaps g_i = (λ_i − m_i)/(m_i +
    10⁻⁶) with m_i the mean of λ₀..λ_i. k = the first arg-max of g for the first α whose max g is
    larger than every earlier α's (and than 0). Then ``cluster_qr`` on the first k eigenvectors x of
    the last α (``vectors="last"``, as released: the code keeps the chosen α's vectors in a variable
    it never reads) or of the chosen α (``vectors="chosen"``). The four eigenproblems are solved as
    one batch. No gap above 0 (a graph without edges): one segment, k = 1, ``alpha`` 0."""
    scaled = scaled_cosine(unit_rows(features.float()))  # normalised twice, as the code (see diffcut_partition)
    weights = torch.stack([scaled.pow(alpha) for alpha in AUTOSC_ALPHAS])
    degrees = weights.sum(-1)  # (4, N)
    inv_sqrt = 1.0 / degrees.sqrt()
    laplacian = torch.diag_embed(degrees) - weights
    values, eigenvectors = torch.linalg.eigh(inv_sqrt[:, :, None] * laplacian * inv_sqrt[:, None, :])
    count = torch.arange(1, values.shape[-1] + 1, device=values.device)
    means = values.cumsum(-1) / count
    gaps = (values - means) / (means + AUTOSC_EPSILON)
    best_gap, chosen, clusters = 0.0, None, 1
    for index, (largest, position) in enumerate(zip(gaps.max(-1).values.tolist(), gaps.argmax(-1).tolist())):
        if largest > best_gap:  # strictly: ties keep the earlier α; NaN never wins
            best_gap, chosen, clusters = largest, index, position
    if chosen is None:
        return AutoSCPartition(torch.zeros(weights.shape[-1], dtype=torch.int64, device=features.device), 1, 0.0)
    source = chosen if vectors == "chosen" else len(AUTOSC_ALPHAS) - 1
    embedding = (inv_sqrt[source, :, None] * eigenvectors[source, :, :clusters]).cpu().numpy()
    labels = np.unique(cluster_qr(embedding), return_inverse=True)[1].reshape(-1)
    return AutoSCPartition(torch.from_numpy(labels).to(features.device), clusters, AUTOSC_ALPHAS[chosen])


def cluster_qr(vectors: np.ndarray) -> np.ndarray:
    """The discrete partition closest to a spectral embedding ``vectors`` (N, k) (Damle, Minden and
    Ying, 2019), as scikit-learn's ``sklearn.cluster._spectral.cluster_qr`` and DiffCut's AutoSC
    compute it: k pivot rows from the column-pivoted QR of vectorsᵀ, the orthogonal factor U·Vᵀ of
    those rows' SVD (their transpose), and per node the arg-max of |vectors·U·Vᵀ|; (N,) int64 in
    0..k−1 (ties: the lower column). In the dtype given (the released code: float32)."""
    k = vectors.shape[1]
    _, _, pivots = scipy.linalg.qr(vectors.T, pivoting=True)
    left, _, right = scipy.linalg.svd(vectors[pivots[:k], :].T)
    return np.abs(vectors @ (left @ right.conj())).argmax(axis=1)


def released_leaf_order(heaps: list[int]) -> list[int]:
    """The leaves (given by their heap indices, as ``Hierarchy.heaps``) in the order of the ids the
    released ``assemble_clusters`` gives them.

    The code collects each accepted split's upper side as a mask, in pre-order with the upper side
    explored first, and sums them with weights w₁ = 1, w_{m+1} = (largest sum so far) + 1; ids are
    the ranks of the sums. A node lies in the masks of the splits where its leaf's path goes up
    (with ``drop_zero_rows`` the dropped nodes go down, so this holds for them too), so the sums
    are computed per leaf, here with exact integers."""
    if len(heaps) == 1:
        return [0]
    splits = set()
    for heap in heaps:
        while heap > 1:
            heap //= 2
            splits.add(heap)
    stack, codes, weight = [1], [0] * len(heaps), 1
    while stack:
        node = stack.pop()
        if node not in splits:
            continue
        upper = 2 * node + 1
        for leaf, heap in enumerate(heaps):
            shift = heap.bit_length() - upper.bit_length()
            if shift >= 0 and heap >> shift == upper:
                codes[leaf] += weight
        weight = max(codes) + 1
        stack += [2 * node, upper]  # the upper side is explored first
    return sorted(range(len(heaps)), key=codes.__getitem__)


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
) -> tuple[torch.Tensor, Hierarchy | AutoSCPartition]:
    """Steps 1–3 on one image's features (N, C) on ``grid`` (h, w) → ((h·a, w·a) int64 labels at
    the assignment grid, a = ``assign_factor``, and the cut's hierarchy, or with ``tau="auto"``
    AutoSC's partition, assigned alike)."""
    if config.autosc:
        partition = autosc_partition(features, config.autosc_vectors)
    else:
        partition = diffcut_partition(features, config)
    size = (grid[0] * config.assign_factor, grid[1] * config.assign_factor)
    return assign_cells(features, grid, partition.assignment, size), partition


def refine_labels(labels: torch.Tensor, image: torch.Tensor, config: DiffCutConfig) -> torch.Tensor:
    """Step 4: labels (H, W) and the model input (1, 3, h', w') in [-1, 1] → (H, W) int64 labels."""
    pixels = torch.round((image.float() + 1.0) * 127.5) / 255.0  # the uint8 pixels in [0, 1], as the code reads them
    pixels = F.interpolate(pixels, size=tuple(labels.shape), mode="bilinear", align_corners=False)
    return pamr_median(labels, pixels.to(labels.device), config.pamr_iterations, config.pamr_dilations)


def pamr_median(labels: torch.Tensor, image: torch.Tensor, iterations: int, dilations: tuple[int, ...]) -> torch.Tensor:
    """Labels (H, W) and the image (1, 3, H, W) → PAMR on the one-hot masks of the ids present (in
    ascending order), their arg-max (ties: the lower id), then a 3×3 median filter of the ids (edges
    mirrored, scipy's default), as ``eval_diffcut.py`` does; (H, W) int64. The code filters the
    arg-max indices, i.e. the ranks of the present ids: the same labels, as ranking is monotone."""
    present = torch.unique(labels)
    masks = (labels[None] == present[:, None, None]).float()[None]  # (1, S, H, W)
    refined = present[pamr(image, masks, iterations, dilations)[0].argmax(0)]
    filtered = median_filter(refined.cpu().numpy(), size=3)
    return torch.from_numpy(np.ascontiguousarray(filtered)).to(labels.device)


def segment_diffcut(
    bundle: AttentionBundle, config: DiffCutConfig, timer: StageTimer | None = None
) -> list[MethodResult]:
    """DiffCut on every image of ``bundle`` (its ``features``): labels at the model input's pixels,
    each segment with its parent heap index in the cut's tree (none with ``tau="auto"``: AutoSC's
    segments are flat)."""
    if bundle.features is None or bundle.feature_grid is None:
        raise ValueError(
            "diffcut reads the output features of one self-attention layer: keep feature_layer set ('down:-1')"
        )
    timer = timer or StageTimer()
    results = []
    for index in range(len(bundle)):
        with timer.stage("segment"):
            labels, partition = diffcut_labels(bundle.features[index], bundle.feature_grid, config)
            if config.pamr_iterations:
                if bundle.images is None:
                    raise ValueError("pamr_iterations needs the image: segment images, not cached features")
                labels = refine_labels(labels, bundle.images[index : index + 1], config)
            labels = labels.repeat_interleave(config.upsample_factor, 0).repeat_interleave(config.upsample_factor, 1)
        parents = list(partition.parents) if isinstance(partition, Hierarchy) else None  # AutoSC: flat
        results.append(MethodResult(labels, parents=parents))
    return results
