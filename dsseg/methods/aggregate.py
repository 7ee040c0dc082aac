"""Multi-resolution aggregation of self-attention to the largest level's grid (DiffSeg, Sec. 3.2).

For a level of grid (h, w) and the target grid (H, W) (64×64 for SD at 512²):
- key axis: each query's (h, w) attention map is bilinearly upsampled to (H, W) (half-pixel
  centres, as TF's resize) and renormalised to sum to 1;
- query axis: tiled (repeated) by H/h and W/w, so each of the H·W target queries takes the
  map of the coarse query that covers it;
- levels are summed with weights ∝ √N (the side length: [64, 32, 16, 8]/120 by default),
  normalised to sum to 1, so every row of the result is a probability distribution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from dsseg.model.attention import Grid


def level_size(grid: Grid) -> int:
    """The name of a level: its longer side (64, 32, 16, 8 for SD at 512²)."""
    return max(grid)


def select_levels(
    grids: Sequence[Grid],
    resolutions: Sequence[int] | None = None,
    weights: Mapping[int, float] | Sequence[float] | None = None,
) -> dict[Grid, float]:
    """Grids to aggregate and their normalised weights.

    ``resolutions``: level sizes to use (None = all of ``grids``). ``weights``: per level size, as a
    mapping or a sequence in the order of ``resolutions`` (or largest level first); default ∝ √N.
    """
    by_size = {level_size(g): g for g in grids}
    sizes = sorted(by_size, reverse=True) if resolutions is None else list(resolutions)
    missing = [s for s in sizes if s not in by_size]
    if missing or not sizes:
        raise ValueError(
            f"resolutions {missing or sizes} not available; captured levels are {sorted(by_size, reverse=True)}"
        )
    if weights is None:
        raw = {s: float(by_size[s][0] * by_size[s][1]) ** 0.5 for s in sizes}
    elif isinstance(weights, Mapping):
        raw = {s: float(weights[s]) for s in sizes}
    else:
        if len(weights) != len(sizes):
            raise ValueError(f"{len(weights)} weights given for {len(sizes)} resolutions {sizes}")
        raw = dict(zip(sizes, map(float, weights)))
    if min(raw.values()) < 0 or sum(raw.values()) <= 0:
        raise ValueError(f"resolution weights must be non-negative with a positive sum; got {raw}")
    total = sum(raw.values())
    return {by_size[s]: w / total for s, w in raw.items()}


def aggregate_self_attention(
    self_attention: Mapping[Grid, torch.Tensor],
    resolutions: Sequence[int] | None = None,
    weights: Mapping[int, float] | Sequence[float] | None = None,
) -> tuple[torch.Tensor, Grid]:
    """Aggregate per-level self-attention to the largest selected grid.

    ``self_attention[(h, w)]``: (B, h·w, h·w), rows are queries. Returns ((B, N, N) float32 with
    N = H·W, rows sum to 1, row index = target query in row-major order; (H, W)).
    """
    levels = select_levels(list(self_attention), resolutions, weights)
    target = max(levels, key=lambda g: g[0] * g[1])
    out: torch.Tensor | None = None
    for grid, weight in levels.items():
        contribution = _level_to_target(self_attention[grid].float(), grid, target) * weight
        if out is None and grid == target:
            out = contribution
            continue
        if out is None:
            batch = contribution.shape[0]
            out = contribution.new_zeros(batch, target[0] * target[1], target[0] * target[1])
        _add_tiled(out, contribution, grid, target)
    assert out is not None
    return out, target


def _level_to_target(attention: torch.Tensor, grid: Grid, target: Grid) -> torch.Tensor:
    """(B, n, n) → (B, n, H·W): key maps upsampled to the target grid and renormalised."""
    batch, queries, _ = attention.shape
    if grid == target:
        return attention / attention.sum(-1, keepdim=True)
    h, w = grid
    if target[0] % h or target[1] % w:
        raise ValueError(f"level {grid} does not tile the target grid {target}")
    maps = attention.reshape(batch * queries, 1, h, w)
    maps = F.interpolate(maps, size=target, mode="bilinear", align_corners=False)
    maps = maps.reshape(batch, queries, target[0] * target[1])
    return maps / maps.sum(-1, keepdim=True)


def _add_tiled(out: torch.Tensor, keys: torch.Tensor, grid: Grid, target: Grid) -> None:
    """out (B, H·W, N) += keys (B, h·w, N) with each coarse query repeated over its H/h × W/w block."""
    batch, _, n = keys.shape
    h, w = grid
    fh, fw = target[0] // h, target[1] // w
    out.view(batch, h, fh, w, fw, n).add_(keys.view(batch, h, 1, w, 1, n))
