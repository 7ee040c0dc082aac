"""Capture of head-averaged attention probabilities from a diffusers UNet.

``capture_attention(unet, spec, latent_hw)`` swaps a ``CapturingAttnProcessor`` into the
attention layers ``spec`` selects and restores the original processors on exit. A captured
layer computes Q and K once, forms softmax(QKᵀ/√d) explicitly (in head chunks of bounded
size), adds its head mean to the store and multiplies by V, so the layer's output is the same
as the fast path's. Layers that are not captured keep their original processor (diffusers'
scaled_dot_product_attention path).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import UNet2DConditionModel

from dsseg.model.config import UNET_LEVELS, Block, Capture

Kind = Literal["self", "cross"]
Grid = tuple[int, int]

# Largest score chunk materialised at once, in elements (B × heads × N × M); 2**28 = 1 GiB of float32.
MAX_CHUNK_ELEMENTS = 2**28


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer: its processor key, kind and place (a UNet block, or ``"layer"`` and the
    block ``index`` in an MM-DiT)."""

    name: str
    kind: Kind
    block: Block | Literal["layer"]
    index: int | None = None


def attention_layers(unet: UNet2DConditionModel) -> list[AttentionLayer]:
    """Every attention layer of ``unet`` in forward order (attn1 = self, attn2 = cross)."""
    layers = []
    for name in unet.attn_processors:
        block = name.split("_", 1)[0]
        kind: Kind = "self" if ".attn1." in name else "cross"
        layers.append(AttentionLayer(name=name, kind=kind, block="mid" if block == "mid" else block))  # type: ignore[arg-type]
    return layers


def level_grids(latent_hw: Grid, levels: int = UNET_LEVELS) -> list[Grid]:
    """Token grids of the UNet levels for a latent of ``latent_hw``: (h, w), (h/2, w/2), …"""
    h, w = latent_hw
    grids = []
    for level in range(levels):
        factor = 2**level
        if h % factor or w % factor:
            raise ValueError(
                f"latent size {latent_hw} must be divisible by {2 ** (levels - 1)} (image side a multiple of 64)"
            )
        grids.append((h // factor, w // factor))
    return grids


class AttentionStore:
    """Running per-level means of captured attention.

    ``self_attention[grid]``: (B, N, N) float32, rows sum to 1, N = h·w; ``cross_attention[grid]``:
    (B, N, T) float32 over the T text tokens. Each is the mean over heads and then over the
    captured layers of that level.
    """

    def __init__(self, spec: Capture, latent_hw: Grid, grids: list[Grid] | None = None) -> None:
        """``grids``: the token grids layers may have (default: the UNet levels of ``latent_hw``)."""
        self.spec = spec
        self._grids = {h * w: (h, w) for h, w in (grids or level_grids(latent_hw))}
        self._sums: dict[tuple[Kind, Grid], torch.Tensor] = {}
        self._counts: dict[tuple[Kind, Grid], int] = {}

    def grid_for(self, num_tokens: int, kind: Kind) -> Grid | None:
        """The level grid of a layer with ``num_tokens`` queries, or None if not kept (the
        resolution filter applies to self-attention; cross-attention is kept at every level)."""
        grid = self._grids.get(num_tokens)
        if grid is None:
            raise ValueError(f"{num_tokens} query tokens match no token grid of {sorted(self._grids.values())}")
        if kind == "self" and not self.spec.keeps_self_attention_at(max(grid)):
            return None
        return grid

    def add(self, kind: Kind, grid: Grid, head_mean: torch.Tensor) -> None:
        key = (kind, grid)
        if key in self._sums:
            self._sums[key] += head_mean
            self._counts[key] += 1
        else:
            self._sums[key] = head_mean
            self._counts[key] = 1

    def means(self, kind: Kind) -> dict[Grid, torch.Tensor]:
        """Layer-averaged maps of one kind, keyed by grid, largest grid first."""
        found = {grid: total / self._counts[(k, grid)] for (k, grid), total in self._sums.items() if k == kind}
        return dict(sorted(found.items(), key=lambda item: -item[0][0] * item[0][1]))

    def layer_counts(self, kind: Kind) -> dict[Grid, int]:
        """How many layers were averaged into each grid's map."""
        return {grid: count for (k, grid), count in self._counts.items() if k == kind}


class CapturingAttnProcessor:
    """diffusers attention processor that records head-averaged probabilities into a store."""

    def __init__(self, store: AttentionStore, layer: AttentionLayer, original: object) -> None:
        self.store = store
        self.layer = layer
        self.original = original

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        grid = self.store.grid_for(hidden_states.shape[1], self.layer.kind) if hidden_states.ndim == 3 else None
        if grid is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if attention_mask is not None or attn.spatial_norm is not None or attn.group_norm is not None:
            raise NotImplementedError(f"{self.layer.name}: capture supports SD transformer-block attention only")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = (
            _split_heads(x, attn.heads) for x in (attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context))
        )
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        output, head_mean = attend_and_average(query, key, value, attn.scale)
        self.store.add(self.layer.kind, grid, head_mean)
        batch, heads, tokens, head_dim = output.shape
        output = output.transpose(1, 2).reshape(batch, tokens, heads * head_dim)
        output = attn.to_out[1](attn.to_out[0](output))
        if attn.residual_connection:
            output = output + hidden_states
        return output / attn.rescale_output_factor


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads·d) → (B, heads, N, d)."""
    batch, tokens, width = x.shape
    return x.view(batch, tokens, heads, width // heads).transpose(1, 2)


def attend_and_average(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output and head-averaged probabilities.

    query (B, H, N, d), key and value (B, H, M, d) → output (B, H, N, d) in value's dtype and
    probabilities (B, N, M) float32 (logits and softmax in float32, mean over the H heads). Heads are
    processed in chunks so at most ``MAX_CHUNK_ELEMENTS`` scores exist at once.
    """
    batch, heads, tokens, _ = query.shape
    keys = key.shape[2]
    chunk = max(1, min(heads, MAX_CHUNK_ELEMENTS // (batch * tokens * keys)))
    # Logits in float32 whatever the model dtype: half-precision QKᵀ overflows (why SD 2.x sets
    # upcast_attention) and bfloat16 logits shift the maps compared against KL thresholds.
    query, key = query.float() * scale, key.float()  # scaling (N, d) is cheaper than (N, M) scores
    output = value.new_empty(batch, heads, tokens, value.shape[-1])
    head_sum: torch.Tensor | None = None
    for start in range(0, heads, chunk):
        stop = min(start + chunk, heads)
        scores = torch.matmul(query[:, start:stop], key[:, start:stop].transpose(-1, -2))
        probs = scores.softmax(dim=-1)
        del scores
        chunk_sum = probs.sum(dim=1)
        head_sum = chunk_sum if head_sum is None else head_sum.add_(chunk_sum)
        output[:, start:stop] = torch.matmul(probs.to(value.dtype), value[:, start:stop])
    return output, head_sum.div_(heads)


@contextmanager
def capture_attention(unet: UNet2DConditionModel, spec: Capture, latent_hw: Grid) -> Iterator[AttentionStore]:
    """Within the block, ``unet`` forward passes record the attention ``spec`` selects.

    The original processors are restored on exit, also after an exception.
    """
    originals = unet.attn_processors
    store = AttentionStore(spec, latent_hw)
    processors = {
        layer.name: CapturingAttnProcessor(store, layer, originals[layer.name])
        if spec.selects(layer)
        else originals[layer.name]
        for layer in attention_layers(unet)
    }
    unet.set_attn_processor(processors)
    try:
        yield store
    finally:
        unet.set_attn_processor(dict(originals))
