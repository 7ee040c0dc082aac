"""From latent-grid maps to label maps in the model-input frame (bilinear, arg-max; torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Proposals upsampled at once in upsample_argmax: bounds memory at ~CHUNK × (f·H) × (f·W) floats.
ARGMAX_CHUNK = 16


def upsample_argmax(maps: torch.Tensor, factor: int) -> torch.Tensor:
    """Per-pixel arg-max of bilinearly upsampled maps, as compact labels.

    maps (K, H, W) float → (f·H, f·W) int64 ids 0..S−1 in order of first map index (maps that
    win no pixel are dropped). See ``upsample_argmax_index``.
    """
    return compact_labels(upsample_argmax_index(maps, factor))


def upsample_argmax_index(maps: torch.Tensor, factor: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-pixel index of the largest bilinearly upsampled map: maps (K, H, W) → (f·H, f·W) int64 in
    0..K−1 (or at ``size`` (h, w) when given, whatever the factor).

    Upsampling uses half-pixel centres (TF/Keras bilinear); ties keep the lower index. Processed
    in chunks of maps so memory stays bounded for large K.
    """
    size = tuple(size) if size is not None else (maps.shape[1] * factor, maps.shape[2] * factor)
    best_value = torch.full(size, -torch.inf, device=maps.device)
    best_index = torch.zeros(size, dtype=torch.int64, device=maps.device)
    for start in range(0, len(maps), ARGMAX_CHUNK):
        chunk = F.interpolate(
            maps[None, start : start + ARGMAX_CHUNK].float(), size=size, mode="bilinear", align_corners=False
        )[0]
        value, index = chunk.max(dim=0)
        better = value > best_value  # strict: ties keep the earlier map, as arg-max does
        best_value = torch.where(better, value, best_value)
        best_index = torch.where(better, index + start, best_index)
    return best_index


def compact_labels(labels: torch.Tensor) -> torch.Tensor:
    """Renumber ids to 0..S−1 keeping their order: any int tensor → int64 tensor of the same shape."""
    _, compact = torch.unique(labels, sorted=True, return_inverse=True)
    return compact.reshape(labels.shape)
