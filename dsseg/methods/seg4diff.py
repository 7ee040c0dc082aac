"""Seg4Diff (Kim et al., NeurIPS 2025): segments from an MM-DiT's image→text joint attention.

Unsupervised, as the released ``Seg4DiffUnsup`` (cvlab-kaist/Seg4Diff, commit c81a2c62) runs it on
SD3-medium: an empty prompt, block 9's joint attention (softmax over all image and text keys, heads
averaged), the image rows × the first 77 text columns (the CLIP tokens) as 77 proposal maps, then

1. each position's 77 values min-max normalised over the tokens (``att2mask``), when ``minmax_tokens``;
2. each proposal softmaxed over the positions;
3. one greedy pass in token order: a token not yet grouped anchors a group of every proposal (grouped
   or not: groups may overlap, as released) whose symmetric KL ½(KL(a‖b) + KL(b‖a)) to it is below
   ``kl_threshold``; the group's map is the plain mean of its members;
4. labels: the arg-max of the merged maps, upsampled bilinearly to the image's own size (the crop
   box's, when the model input was cut from it), as the released code upsamples to the original.

Open vocabulary, as the released ``Seg4DiffOVSS``: with candidate classes the image is prompted with
their names joined by spaces, and each class's map is the mean of its CLIP tokens' image→text columns
(raw probabilities, no background class); each pixel takes the class of the largest map upsampled
to the image's size.
The released code prompts with the classes present in the ground truth; dsseg prompts with the
image's candidate classes (a manifest's per-image classes reproduce that protocol).
"""

from __future__ import annotations

import torch

from dsseg.methods.base import MethodResult
from dsseg.methods.configs import Seg4DiffConfig
from dsseg.methods.upsample import compact_labels, upsample_argmax_index
from dsseg.model.extract import AttentionBundle
from dsseg.timing import StageTimer

MINMAX_EPS = 1e-6  # att2mask's denominator guard


def token_proposals(image_to_text: torch.Tensor, config: Seg4DiffConfig) -> torch.Tensor:
    """One image's image→text attention (N, T) → proposals (K, N) float64, K = ``text_tokens``
    columns, each softmaxed over the N positions (steps 1–2)."""
    maps = image_to_text[:, : config.text_tokens].double()
    if config.minmax_tokens:
        maps = maps - maps.min(dim=1, keepdim=True).values
        maps = maps / (maps.max(dim=1, keepdim=True).values + MINMAX_EPS)
    return maps.T.softmax(dim=1)


def symmetric_kl(proposals: torch.Tensor) -> torch.Tensor:
    """(K, N) distributions → (K, K) ½(KL(i‖j) + KL(j‖i)) = ½ Σₙ (pᵢ − pⱼ)(log pᵢ − log pⱼ)."""
    logs = proposals.log()
    own = (proposals * logs).sum(dim=1)
    cross = proposals @ logs.T  # [i, j] = Σ pᵢ log pⱼ
    return 0.5 * (own[:, None] + own[None, :] - cross - cross.T)


def greedy_merge(proposals: torch.Tensor, threshold: float, max_masks: int | None = None) -> torch.Tensor:
    """Step 3: (K, N) proposals → (M, N) group means, M ≤ K, in anchor order (see the module docstring)."""
    close = symmetric_kl(proposals) < threshold  # (K, K)
    grouped = torch.zeros(len(proposals), dtype=torch.bool, device=proposals.device)
    merged = []
    for anchor in range(len(proposals)):
        if grouped[anchor]:
            continue
        members = close[anchor].clone()
        members[anchor] = True
        grouped |= members
        merged.append(proposals[members].mean(dim=0))
        if max_masks is not None and len(merged) == max_masks:
            break
    return torch.stack(merged)


def segment_seg4diff(
    bundle: AttentionBundle, config: Seg4DiffConfig, timer: StageTimer | None = None
) -> list[MethodResult]:
    """Seg4Diff on every image of ``bundle``: label maps at the size of each image's crop box (its
    ``source_hw``), or without one at (f·h, f·w) for the token grid (h, w) and ``upsample_factor`` f
    (1024² for SD3 at 1024²). Unsupervised without class maps, open-vocabulary with them (named by
    class). Stages timed: segment."""
    timer = timer or StageTimer()
    results = []
    with timer.stage("segment"):
        for index in range(len(bundle)):
            image = bundle.image(index)
            if image.class_attention is not None:
                results.append(label_by_class(image, config))
                continue
            if not image.cross_attention:
                raise ValueError("seg4diff reads image→text attention: capture it (cross_attention=True)")
            grid, image_to_text = next(iter(image.cross_attention.items()))
            merged = greedy_merge(token_proposals(image_to_text[0], config), config.kl_threshold, config.max_masks)
            labels = upsample_argmax_index(merged.float().reshape(-1, *grid), config.upsample_factor, label_size(image))
            results.append(MethodResult(labels=compact_labels(labels)))
    return results


def label_by_class(image: AttentionBundle, config: Seg4DiffConfig) -> MethodResult:
    """Open vocabulary: one image's class maps → each pixel the class of the largest upsampled map."""
    names = list(image.class_names[0])
    grid, maps = next(iter(image.class_attention[0].items()))  # (C, N) at the one token grid
    size = label_size(image) or (grid[0] * config.upsample_factor, grid[1] * config.upsample_factor)
    if not names:
        return MethodResult(labels=torch.zeros(size, dtype=torch.int64), names=[None])
    labels = upsample_argmax_index(maps.float().reshape(-1, *grid), config.upsample_factor, size)
    return MethodResult(labels=labels, names=names)


def label_size(image: AttentionBundle) -> tuple[int, int] | None:
    """The (h, w) pixels one image's model input was resized from (its crop box), or None."""
    return None if image.source_hw is None else image.source_hw[0]
