"""Self-attention from its definition, for the capture tests: each layer's input recorded by a hook,
then softmax(QKᵀ/√d) per head computed from the layer's own projections."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def self_attention_inputs(unet):
    """Within the block, each self-attention layer's input is recorded: yields {layer name: (B, N, C)}."""
    inputs = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda m, args, kwargs, name=name: inputs.__setitem__(
                name, (args[0] if args else kwargs["hidden_states"]).clone()
            ),
            with_kwargs=True,
        )
        for name, module in unet.named_modules()
        if name.endswith("attn1")
    ]
    try:
        yield inputs
    finally:
        for hook in hooks:
            hook.remove()


def direct_self_attention(unet, inputs) -> dict[int, torch.Tensor]:
    """Per token count N: the mean over the recorded layers of the head mean of softmax(QKᵀ/√d), (B, N, N)."""
    expected: dict[int, list[torch.Tensor]] = {}
    with torch.no_grad():
        for name, x in inputs.items():
            module = unet.get_submodule(name)
            q, k = module.to_q(x), module.to_k(x)
            b, n, width = q.shape
            heads = module.heads
            q = q.view(b, n, heads, width // heads).transpose(1, 2)
            k = k.view(b, n, heads, width // heads).transpose(1, 2)
            probs = torch.softmax(q @ k.transpose(-1, -2) / (width // heads) ** 0.5, dim=-1).mean(1)
            expected.setdefault(n, []).append(probs)
    return {n: torch.stack(maps).mean(0) for n, maps in expected.items()}


@contextmanager
def joint_attention_inputs(transformer):
    """Within the block, each MM-DiT block's attention inputs are recorded: yields {block index:
    (image states (B, N, C), text states (B, T, C))} as the block's ``attn`` receives them."""
    inputs = {}
    hooks = [
        block.attn.register_forward_pre_hook(
            lambda m, args, kwargs, i=i: inputs.__setitem__(
                i, (kwargs["hidden_states"].clone(), kwargs["encoder_hidden_states"].clone())
            ),
            with_kwargs=True,
        )
        for i, block in enumerate(transformer.transformer_blocks)
    ]
    try:
        yield inputs
    finally:
        for hook in hooks:
            hook.remove()


def direct_joint_attention(transformer, inputs) -> dict[int, torch.Tensor]:
    """Per block index: the head mean of softmax(QKᵀ/√d) over the joint [image, text] keys, for the
    image queries, (B, N, N + T) float64, from the block's own projections (no qk norm: SD3-medium)."""
    out = {}
    with torch.no_grad():
        for i, (image, text) in inputs.items():
            attn = transformer.transformer_blocks[i].attn
            q = attn.to_q(image).double()
            k = torch.cat([attn.to_k(image), attn.add_k_proj(text)], dim=1).double()
            b, n, width = q.shape
            d = width // attn.heads
            q = q.view(b, n, attn.heads, d).transpose(1, 2)
            k = k.view(b, k.shape[1], attn.heads, d).transpose(1, 2)
            out[i] = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1).mean(1)
    return out
