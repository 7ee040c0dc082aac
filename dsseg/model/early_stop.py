"""Stop a capturing forward once the last module it reads has run.

A capture reads attention maps of some layers and, for feature methods, one module's output; what
the network computes after the last of them is never used (the step's prediction is discarded).
``last_read_module`` finds that module in forward order; ``stop_after(module)`` raises
``StopForward`` from a forward hook on it and swallows it around the call. DiffCut on SD's last
down-path layer skips the mid and up blocks; Seg4Diff's block 9 of SD3's 24 skips 14 blocks.

UNet forward order is down blocks, mid block, up blocks (``attn_processors`` lists the mid block
last, as modules are registered); within a block, the order ``attn_processors`` gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from dsseg.model.attention import Grid, attention_layers, level_grids
from dsseg.model.config import Capture

BLOCK_RANK = {"down": 0, "mid": 1, "up": 2}


class StopForward(Exception):
    """Raised once the last module a capture reads has run; never leaves ``stop_after``."""


@contextmanager
def stop_after(module: torch.nn.Module | None) -> Iterator[None]:
    """Within the block, a forward pass ends (quietly) right after ``module`` runs; None: never."""
    if module is None:
        yield
        return

    def stop(_module, _inputs, _output) -> None:
        raise StopForward

    handle = module.register_forward_hook(stop)
    try:
        yield
    except StopForward:
        pass
    finally:
        handle.remove()


def last_read_module(
    backbone, spec: Capture, latent_hw: Grid, feature_module: torch.nn.Module | None = None
) -> torch.nn.Module | None:
    """The module after which nothing ``spec`` captures (at ``latent_hw``) or ``feature_module``
    outputs is computed; None when nothing is read (run the whole forward)."""
    if backbone.family == "mmdit":
        return _last_mmdit_block(backbone.denoiser, spec, feature_module)
    return _last_unet_layer(backbone.denoiser, spec, latent_hw, feature_module)


def _last_mmdit_block(transformer, spec: Capture, feature_module) -> torch.nn.Module | None:
    blocks = list(transformer.transformer_blocks)
    read = []
    if spec.self_attention or spec.cross_attention:
        read += list(range(len(blocks))) if spec.layers is None else [i for i in spec.layers if i < len(blocks)]
    if feature_module is not None:
        read.append(next(i for i, block in enumerate(blocks) if block is feature_module))
    return blocks[max(read)] if read else None


def _last_unet_layer(unet, spec: Capture, latent_hw: Grid, feature_module) -> torch.nn.Module | None:
    grids = level_grids(latent_hw)
    up_blocks = len(unet.up_blocks)
    mid_level = len(unet.down_blocks) - 1
    ranked = []
    for order, layer in enumerate(attention_layers(unet)):
        index = 0 if layer.block == "mid" else int(layer.name.split(".")[1])
        level = {"down": index, "mid": mid_level, "up": up_blocks - 1 - index}[layer.block]
        module = unet.get_submodule(layer.name.removesuffix(".processor"))
        captured = spec.selects(layer) and (
            layer.kind == "cross" or spec.keeps_self_attention_at(max(grids[min(level, len(grids) - 1)]))
        )
        if captured or module is feature_module:
            ranked.append(((BLOCK_RANK[layer.block], index, order), module))
    return max(ranked, key=lambda item: item[0])[1] if ranked else None
