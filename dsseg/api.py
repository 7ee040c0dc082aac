"""The public entry points: ``segment_image`` and ``segment_attention``."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from dsseg.checks import check_classes_given
from dsseg.io.frames import resize_labels
from dsseg.io.images import load_rgb
from dsseg.methods import get_method
from dsseg.model.backbone import DEFAULT_BACKBONE, AnyBackbone, cached_backbone
from dsseg.model.class_filters import ClassFilter
from dsseg.model.extract import AttentionBundle
from dsseg.segmentation import Segmentation
from dsseg.segmenter import Segmenter
from dsseg.spec import MethodSpec
from dsseg.timing import StageTimer


def segment_image(
    image: str | Image.Image | np.ndarray,
    method: str = "diffseg",
    backbone: str | os.PathLike | AnyBackbone = DEFAULT_BACKBONE,
    device: str | None = None,
    dtype: str | None = None,
    class_filter: ClassFilter | None = None,
    captioner: Any = None,
    **params: Any,
) -> Segmentation:
    """Segment one image (path, PIL image or (H, W, 3) uint8 array) with one UNet step.

    ``backbone``: ``"tiny"``, ``"sd-v1-random"``, a hub id, a local folder or a loaded
    ``Backbone`` (loaded ones are cached per name). ``params``: extraction and method parameters
    by name (e.g. ``timestep``, ``kl_threshold``; see ``dsseg.spec``).

    Open vocabulary: ``segment_image(img, method="openvocab", classes=["horse", "grass"])`` gives
    ``labels`` indexing ``names`` with ``names[0] == "background"``. ``classes`` with another
    method names its segments (``names``, ``scores``); with ``naming="clip"`` a CLIP names them
    among the classes (``clip_model``: the released DiffCut CLIP by default, or ``"tiny-clip"``),
    the UNet prompted with none of them. ``class_filter`` (see
    ``dsseg.model.class_filters``) narrows the candidates to those the image plausibly shows.

    Captions: ``captioner`` is a ``Captioner`` (``dsseg.model.captioner.load_captioner``) or its name
    (``"tiny"``, a BLIP hub id or folder; loaded ones are cached). ``naming="caption"`` (diffseg,
    ncut) names the segments with the nouns of the image's caption, the caption being the prompt;
    ``descriptors="caption"`` (openvocab) continues each class prompt with a conditional caption.
    The result's ``caption`` says what was read.
    """
    spec = MethodSpec(method, params)  # validated before a model loads
    supplied = getattr(class_filter, "supplies_classes", False)
    check_classes_given([spec.resolved], "the image has", filter_supplies_classes=supplied)
    if isinstance(backbone, (str, os.PathLike)):  # a name, hub id or folder; else a loaded backbone
        backbone = cached_backbone(str(backbone), device=device, dtype=dtype, methods=(spec.method,))
    if isinstance(captioner, str):
        from dsseg.model.captioner import cached_captioner

        captioner = cached_captioner(captioner, device=device, dtype=dtype)
    segmenter = Segmenter(backbone, spec, class_filter=class_filter, captioner=captioner)
    timer = StageTimer(backbone.device)
    with timer.stage("decode"):
        batch = segmenter.batch([load_rgb(image)])
    ((segmentation,),) = segmenter.segment(batch, timer=timer)
    return segmentation


def segment_attention(
    attn: Mapping[int | tuple[int, int], np.ndarray | torch.Tensor],
    method: str = "diffseg",
    output_size: tuple[int, int] = (512, 512),
    **params: Any,
) -> np.ndarray:
    """Segment cached self-attention of one image.

    ``attn`` maps a latent resolution r (64, 32, 16, 8 for SD at 512²) — or a grid (h, w) — to
    self-attention of shape (heads, N, N) or (N, N), N = r², rows are queries summing to 1
    (the layout the official DiffSeg code takes). Returns (H, W) int32 labels at ``output_size``.
    """
    config = MethodSpec(method, params).resolved
    if not config.extraction.capture.self_attention:
        raise ValueError(f"{method} segments one layer's features, not attention maps: use segment_image")
    bundle = bundle_from_attention(attn)
    result = get_method(method).segment(bundle, config.params, None)[0]
    return resize_labels(result.labels.cpu().numpy(), tuple(output_size)).astype(np.int32)


def bundle_from_attention(attn: Mapping[int | tuple[int, int], np.ndarray | torch.Tensor]) -> AttentionBundle:
    """A one-image ``AttentionBundle`` from user-supplied per-resolution self-attention."""
    if not attn:
        raise ValueError("attn is empty: give at least one resolution → (heads, N, N) or (N, N) array")
    self_attention = {}
    for key, value in attn.items():
        maps = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value).float()
        if maps.ndim == 3:
            maps = maps.mean(0)
        if maps.ndim != 2 or maps.shape[0] != maps.shape[1]:
            raise ValueError(f"attn[{key}] must be (heads, N, N) or (N, N); got {tuple(np.shape(value))}")
        grid = tuple(key) if isinstance(key, tuple) else (int(key), int(key))
        if grid[0] * grid[1] != maps.shape[0]:
            side = math.isqrt(maps.shape[0])
            raise ValueError(
                f"attn[{key}] has N = {maps.shape[0]} tokens, expected {grid[0] * grid[1]} (did you mean {side}?)"
            )
        self_attention[grid] = maps[None]
    largest = max(self_attention, key=lambda g: g[0] * g[1])
    ordered = dict(sorted(self_attention.items(), key=lambda item: -item[0][0] * item[0][1]))
    return AttentionBundle(self_attention=ordered, cross_attention={}, latent_hw=largest, timestep=-1)
