"""Image-aware refinement of score maps: pixel-adaptive mask refinement (PAMR, Araslanov & Roth,
CVPR 2020), in torch.

Each pixel's scores become a weighted mean of its neighbours' scores — the 8 neighbours at each
of several dilations — with weights from a softmax over the neighbours of the channel mean of
−|ΔI_c| / (0.1·σ_c + 10⁻⁸), ΔI_c the difference of colour channel c to the neighbour and σ_c the
local standard deviation of channel c. As the released PAMR (``tools/pamr.py`` of DiffCut, from
1-stage-wseg) computes it, σ_c is the unbiased standard deviation over the 3×3 dilated window of
every dilation, centre included: 9·len(dilations) values, the pixel itself once per dilation.
Edges are replicated. Repeated ``iterations`` times, so scores spread within regions of similar
colour and stop at edges. Same code on CPU and GPU; memory O(C·H·W) per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

TEMPERATURE = 0.1  # scales the local colour spread (PAMR's setting)
EPSILON = 1e-8  # added to the scaled spread (PAMR's setting): flat windows give uniform weights


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """The 8 neighbours (dy, dx) at each dilation."""
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _shifted(x: torch.Tensor, offset: tuple[int, int], pad: int) -> torch.Tensor:
    """x (B, C, H, W) → the value at (y + dy, x + dx) for every pixel (edges replicated)."""
    height, width = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = offset
    return padded[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width]


def pamr_affinities(image: torch.Tensor, dilations: Sequence[int] = (1, 2, 4, 8)) -> torch.Tensor:
    """(B, 3, H, W) image → (B, K, H, W) float32 weights over K = 8·len(dilations) neighbours, summing to 1."""
    image = image.float()
    pad = max(dilations)
    neighbours = torch.stack([_shifted(image, o, pad) for o in neighbour_offsets(dilations)], dim=2)  # (B, 3, K, H, W)
    centres = image[:, :, None].expand(-1, -1, len(dilations), -1, -1)  # the centre of each dilation's window
    spread = torch.cat([neighbours, centres], dim=2).std(dim=2, keepdim=True)  # (B, 3, 1, H, W), unbiased
    logits = -((neighbours - image[:, :, None]).abs() / (TEMPERATURE * spread + EPSILON)).mean(dim=1)  # (B, K, H, W)
    return logits.softmax(dim=1)


def pamr(
    image: torch.Tensor, scores: torch.Tensor, iterations: int = 10, dilations: Sequence[int] = (1, 2, 4, 8)
) -> torch.Tensor:
    """Refine scores (B, C, H, W) with the image (B, 3, H, W) at the same size; returns (B, C, H, W) float32."""
    if image.shape[-2:] != scores.shape[-2:] or image.shape[0] != scores.shape[0]:
        raise ValueError(f"image {tuple(image.shape)} and scores {tuple(scores.shape)} must share batch and size")
    if iterations < 0 or not dilations or min(dilations) < 1:
        raise ValueError(f"iterations ≥ 0 and positive dilations needed; got {iterations}, {dilations}")
    weights = pamr_affinities(image, dilations)
    offsets, pad = neighbour_offsets(dilations), max(dilations)
    scores = scores.float()
    for _ in range(iterations):
        refined = torch.zeros_like(scores)
        for k, offset in enumerate(offsets):
            refined += weights[:, k : k + 1] * _shifted(scores, offset, pad)
        scores = refined
    return scores
