"""A float64 transcription of the released Seg4Diff unsupervised steps (cvlab-kaist/Seg4Diff, commit
c81a2c62, ``seg4diff/seg4diff_model_unsup.py``: the second ``att2mask``, ``mask_merge``, ``KL``), written
from reading the code, loop for loop, as a test oracle for ``dsseg.methods.seg4diff``."""

from __future__ import annotations

import torch


def att2mask(att: torch.Tensor, p: float = 1.0) -> torch.Tensor:
    """The released normaliser on a (B, HW, C) input: min-max over dim 2 (the tokens), then ** p."""
    att = att - att.min(dim=2, keepdim=True)[0]
    att = att / (att.max(dim=2, keepdim=True)[0] + 1e-6)
    return att**p


def kl(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The released ``KL``: x (N, H, W) (the anchor expanded), y (N, H, W) → (N,) ½KL(x‖y) + ½KL(y‖x)."""
    q = torch.log(x) - torch.log(y)
    kl_1 = torch.sum(torch.mul(x, q), dim=(-2, -1)) / 2
    kl_2 = -torch.sum(torch.mul(y, q), dim=(-2, -1)) / 2
    return kl_1 + kl_2


def mask_merge(attns: torch.Tensor, kl_threshold: float) -> torch.Tensor:
    """The released greedy merge: attns (N, H, W) → (M, H, W), softmax over positions first."""
    n = attns.shape[0]
    probs = torch.softmax(attns.reshape(n, -1), dim=-1)
    attns = probs.view_as(attns)
    matched: set[int] = set()
    new_list = []
    for i in range(n):
        if i in matched:
            continue
        matched.add(i)
        anchor = attns[i].unsqueeze(0).expand(n, -1, -1)
        mask = kl(anchor, attns) < kl_threshold
        for index in torch.nonzero(mask).flatten().tolist():
            matched.add(index)
        new_list.append(attns[mask].mean(dim=0))
    return torch.stack(new_list)


def seg4diff_unsupervised(image_to_text: torch.Tensor, grid: tuple[int, int], kl_threshold: float) -> torch.Tensor:
    """(HW, ≥77) head-mean image→text attention of one image → merged maps (M, h, w) float64."""
    slices = att2mask(image_to_text[None, :, :77].double())  # (1, HW, 77)
    proposals = slices[0].T.reshape(77, *grid)  # "b (h w) l -> b l h w"
    return mask_merge(proposals, kl_threshold)
