"""Capture of head-averaged joint attention from an MM-DiT (``SD3Transformer2DModel``).

An MM-DiT block attends over one joint sequence: the N image tokens, then the T text tokens
(diffusers' ``JointAttnProcessor2_0`` order), with one softmax over all N + T keys.
``capture_joint_attention(transformer, spec, grid)`` swaps a ``JointCapturingProcessor`` into the
blocks ``spec.layers`` selects and restores the originals on exit. For the image queries it forms
softmax(QKᵀ/√d) over the joint keys explicitly (float32, head chunks of bounded size, as the UNet
capture) and keeps the head mean of two parts:

- ``cross`` (image→text): the (N, T) text columns of the joint softmax, as they are (each row sums to
  the attention mass the image token gives the text; Seg4Diff's proposal maps);
- ``self`` (image→image): the (N, N) image columns renormalised to rows summing to 1, which equals
  the softmax over the image keys alone: the map DiffSeg and NCut read (our reading; no released
  code runs them on MM-DiT).

The text queries' outputs go through ``scaled_dot_product_attention`` as before; the block's outputs
are those of the original processor. Blocks not selected, and SD3.5's image-only second attention
(``attn2``), keep their processors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from dsseg.model.attention import AttentionLayer, AttentionStore, Grid, attend_and_average
from dsseg.model.config import Capture


def joint_layers(transformer) -> list[AttentionLayer]:
    """The joint attention layer of every MM-DiT block, in forward order (block = "layer", index i)."""
    return [
        AttentionLayer(name=f"transformer_blocks.{i}.attn.processor", kind="self", block="layer", index=i)
        for i in range(len(transformer.transformer_blocks))
    ]


class JointCapturingProcessor:
    """diffusers joint attention processor that records head-averaged image-query probabilities."""

    def __init__(self, store: AttentionStore, grid: Grid, keep_self: bool, keep_cross: bool, original) -> None:
        self.store = store
        self.grid = grid
        self.keep_self = keep_self
        self.keep_cross = keep_cross
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is None or attention_mask is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        batch, tokens = hidden_states.shape[:2]
        heads = attn.heads

        def split(x: torch.Tensor) -> torch.Tensor:  # (B, L, heads·d) → (B, heads, L, d)
            return x.view(batch, x.shape[1], heads, -1).transpose(1, 2)

        query, key, value = (split(p(hidden_states)) for p in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        text_query, text_key, text_value = (
            split(p(encoder_hidden_states)) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
        )
        if attn.norm_added_q is not None:
            text_query = attn.norm_added_q(text_query)
        if attn.norm_added_k is not None:
            text_key = attn.norm_added_k(text_key)
        keys, values = torch.cat([key, text_key], dim=2), torch.cat([value, text_value], dim=2)
        image_out, probs = attend_and_average(query, keys, values, attn.scale)  # probs (B, N, N + T)
        if self.keep_self:
            image_part = probs[..., :tokens]
            self.store.add("self", self.grid, image_part / image_part.sum(-1, keepdim=True))
        if self.keep_cross:
            self.store.add("cross", self.grid, probs[..., tokens:].contiguous())
        text_out = F.scaled_dot_product_attention(text_query, keys, values)

        def merge(x: torch.Tensor) -> torch.Tensor:  # (B, heads, L, d) → (B, L, heads·d)
            return x.transpose(1, 2).reshape(batch, x.shape[2], -1).to(query.dtype)

        image_states = attn.to_out[1](attn.to_out[0](merge(image_out)))
        text_states = merge(text_out)
        if not attn.context_pre_only:
            text_states = attn.to_add_out(text_states)
        return image_states, text_states


@contextmanager
def capture_joint_attention(transformer, spec: Capture, grid: Grid) -> Iterator[AttentionStore]:
    """Within the block, ``transformer`` forward passes on a token ``grid`` (the latent over the patch
    size) record the joint attention of the blocks ``spec.layers`` selects (None: all): image→image
    as ``self`` and image→text as ``cross`` when ``spec`` asks for each. Originals restored on exit."""
    originals = transformer.attn_processors
    store = AttentionStore(spec, grid, grids=[grid])
    processors = dict(originals)
    for layer in joint_layers(transformer):
        if spec.selects(layer):
            keep_self, keep_cross = spec.self_attention, spec.cross_attention
            processors[layer.name] = JointCapturingProcessor(store, grid, keep_self, keep_cross, originals[layer.name])
    transformer.set_attn_processor(processors)
    try:
        yield store
    finally:
        transformer.set_attn_processor(dict(originals))
