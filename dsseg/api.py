"""The public entry points: ``segment_image`` and ``segment_attention``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from dsseg.model.backbone import DEFAULT_BACKBONE, Backbone, cached_backbone
from dsseg.model.class_filters import ClassFilter, filter_classes
from dsseg.model.extract import AttentionBundle, AttentionExtractor, ExtractConfig, check_resolutions
from dsseg.io.images import Geometry, as_rgb_array, to_model_input
from dsseg.io.masks import encode_labels
from dsseg.methods import MethodResult, get_method, run_method
from dsseg.timing import StageTimer
from dsseg.methods.upsample import compact_to_original, resize_labels

EXTRACT_PARAMS = frozenset(f.name for f in fields(ExtractConfig))


@dataclass(frozen=True)
class Segmentation:
    """One image's segmentation.

    ``labels``: (H, W) int32 segment ids 0..S−1 at the image's original size; segments
    partition the image. ``names``/``scores``/``parents``: per-segment label, score and parent
    id where the method provides them. ``timings_ms``: per-stage wall time (ms) for this image.
    """

    labels: np.ndarray
    method: str
    names: list[str | None] | None = None
    scores: list[float | None] | None = None
    parents: list[int | None] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def num_segments(self) -> int:
        return int(self.labels.max()) + 1

    def to_rles(self) -> list[dict]:
        """Segments as COCO compressed RLE dicts (see ``dsseg.io.masks.encode_labels``) with their
        ``label``, ``score`` and ``parent`` (None where the method gives none)."""
        segments = encode_labels(self.labels)
        for segment in segments:
            sid = segment["segment_id"]
            segment["label"] = self.names[sid] if self.names else None
            segment["score"] = self.scores[sid] if self.scores else None
            segment["parent"] = self.parents[sid] if self.parents else None
        return segments


def split_params(method: str, params: Mapping[str, Any]) -> tuple[ExtractConfig, Any]:
    """Split keyword parameters into an ``ExtractConfig`` and the method's config.

    Extraction fields (``timestep``, ``noise``, ``geometry``, …) go to the former, the rest to
    the method; unknown names raise a ``TypeError`` listing both sets.
    """
    spec = get_method(method)
    extract_params = {k: v for k, v in params.items() if k in EXTRACT_PARAMS}
    method_params = {k: v for k, v in params.items() if k not in EXTRACT_PARAMS}
    try:
        method_config = spec.make_config(method_params)
    except TypeError as error:
        raise TypeError(f"{error}; extraction parameters: {sorted(EXTRACT_PARAMS)}") from None
    method_resolutions = getattr(method_config, "resolutions", None)
    if method_resolutions is not None and "capture_resolutions" not in extract_params:
        extract_params["capture_resolutions"] = method_resolutions  # capture only the levels the method uses
    extract_config = replace(spec.extraction_defaults(), **extract_params)
    if method_resolutions is not None:
        check_resolutions(method_resolutions, extract_config)
        captured = extract_config.capture_resolutions
        if captured is not None and not set(method_resolutions) <= set(captured):
            raise ValueError(f"method resolutions {list(method_resolutions)} are not all captured (capture_resolutions={list(captured)})")
    return extract_config, method_config


def to_segmentation(result: MethodResult, geometry: Geometry, method: str, timer: StageTimer) -> Segmentation:
    """A method's model-frame result → ``Segmentation`` at the original size, ids compacted
    (segments too thin to survive the resize are dropped) and per-segment fields remapped."""
    with timer.stage("upsample"):
        labels, kept = compact_to_original(result.labels.cpu().numpy(), geometry, keep=(0,) if result.background else ())

    def pick(values: list | None) -> list | None:
        return None if values is None else [values[i] for i in kept]

    return Segmentation(
        labels=labels,
        method=method,
        names=pick(result.names),
        scores=pick(result.scores),
        parents=pick(result.parents),
        timings_ms=timer.ms,
    )


class Segmenter:
    """One backbone, extraction and method config, applied to batches: build once, call per batch.

    ``prepare`` turns an (H, W, 3) uint8 image into the model input (CPU work); calling the
    segmenter runs extraction, the method and the mapping back to each image's original size.
    """

    def __init__(
        self, backbone: Backbone, method: str = "diffseg", params: Mapping[str, Any] | None = None, class_filter: ClassFilter | None = None
    ) -> None:
        self.backbone = backbone
        self.method = get_method(method)
        self.extract_config, self.method_config = split_params(method, params or {})
        self.extractor = AttentionExtractor(backbone, self.extract_config)
        self.class_filter = class_filter

    def prepare(self, rgb: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """(H, W, 3) uint8 → ((h, w, 3) uint8 model input, geometry), per the extraction config."""
        return self.extract_config.prepare(rgb)

    def __call__(
        self,
        pixels: np.ndarray,
        geometries: Sequence[Geometry],
        timer: StageTimer | None = None,
        classes: Sequence[Sequence[str] | None] | None = None,
    ) -> list[Segmentation]:
        """pixels (B, h, w, 3) uint8 prepared inputs of one size → B segmentations at original size.

        ``classes``: per image, candidate class names replacing the config's (None entries keep it),
        narrowed by the segmenter's ``class_filter`` when it has one.
        ``timer`` (shared by the batch) collects encode, invert, unet, aggregate, segment and
        upsample; each returned ``Segmentation.timings_ms`` is that batch total, not per image.
        """
        backbone = self.backbone
        timer = timer or StageTimer(backbone.device)
        if self.extract_config.uses_classes and self.class_filter is not None:
            classes = filter_classes(self.class_filter, list(pixels), classes or [None] * len(pixels), self.extract_config.classes)
        bundle = self.extractor(to_model_input(pixels, backbone.device, backbone.dtype), timer, classes)
        results = run_method(self.method, bundle, self.method_config, timer)
        return [to_segmentation(result, geometry, self.method.name, timer) for result, geometry in zip(results, geometries)]


def segment_image(
    image: str | Image.Image | np.ndarray,
    method: str = "diffseg",
    backbone: str | Backbone = DEFAULT_BACKBONE,
    device: str | None = None,
    dtype: str | None = None,
    class_filter: ClassFilter | None = None,
    **params: Any,
) -> Segmentation:
    """Segment one image (path, PIL image or (H, W, 3) uint8 array) with one UNet step.

    ``backbone``: ``"tiny"``, ``"sd-v1-random"``, a hub id, a local folder or a loaded
    ``Backbone`` (loaded ones are cached per name). ``params``: extraction fields
    (``ExtractConfig``) and method parameters (e.g. ``kl_threshold`` for DiffSeg).

    Open vocabulary: ``segment_image(img, method="openvocab", classes=["horse", "grass"])`` gives
    ``labels`` indexing ``names`` with ``names[0] == "background"``. ``classes`` with another
    method names its segments (``names``, ``scores``). ``class_filter`` (see
    ``dsseg.model.class_filters``) narrows the candidates to those the image plausibly shows.
    """
    extract_config, _ = split_params(method, params)  # validate before loading a model
    if extract_config.class_template is not None and not extract_config.classes:
        raise ValueError(f"method {method!r} labels pixels by class: give classes=[...] or vocabulary=... (voc20, context59, coco80)")
    if not isinstance(backbone, Backbone):
        backbone = cached_backbone(backbone, device=device, dtype=dtype)
    segmenter = Segmenter(backbone, method, params, class_filter)
    timer = StageTimer(backbone.device)
    with timer.stage("decode"):
        pixels, geometry = segmenter.prepare(as_rgb_array(image))
    return segmenter(pixels[None], [geometry], timer)[0]


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
    bundle = bundle_from_attention(attn)
    _, method_config = split_params(method, params)
    result = get_method(method).segment(bundle, method_config, None)[0]
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
            raise ValueError(f"attn[{key}] has N = {maps.shape[0]} tokens, expected {grid[0] * grid[1]} (did you mean {side}?)")
        self_attention[grid] = maps[None]
    largest = max(self_attention, key=lambda g: g[0] * g[1])
    ordered = dict(sorted(self_attention.items(), key=lambda item: -item[0][0] * item[0][1]))
    return AttentionBundle(self_attention=ordered, cross_attention={}, latent_hw=largest, timestep=-1)
