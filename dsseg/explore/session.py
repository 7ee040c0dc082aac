"""The explorer's engine for one image (no web framework here): one forward per image, backbone and
extraction, its attention kept in a bounded cache, and re-segmentation from that cache as controls change.

A view (``ImageExplorer.view``) resolves a ``MethodSpec``. The steps are the segmenter's own
(``dsseg.segmenter``): ``Segmenter.forward`` (caption, candidate classes, the UNet forward), then on its
attention ``run_config`` → ``name_segments`` → ``to_segmentation``, NCut's tree cut between the first two.
When a forward with the spec's extraction is cached for the image, only the method runs again, on the
cached bundle, whose memo keeps what does not
depend on the changed parameters (``dsseg.methods.base.memoised``): the aggregation, DiffSeg's anchor
KL distances (τ then only thresholds them), each NCut partition (the tree-depth control then only cuts
the tree: ``dsseg.methods.ncut.cut_result``) and openvocab's class score maps. A spec whose extraction
differs (another method's noise or timestep, other class names, a caption) runs its own forward, cached
in turn; the least recently used forward leaves the cache when it holds ``capacity`` of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from dsseg.io.images import Geometry
from dsseg.io.overlay import overlay, palette
from dsseg.io.sources import parse_classes
from dsseg.model.backbone import DEFAULT_BACKBONE, Backbone, load_backbone
from dsseg.model.extract import AttentionBundle
from dsseg.segmentation import Segmentation
from dsseg.segmenter import Segmenter, forward_groups, name_segments, run_config, to_segmentation
from dsseg.spec import MethodSpec
from dsseg.timing import StageTimer

MEMO_ENTRIES = 32  # intermediates and results kept per cached forward, the least recently used dropped

# Forwards kept: each holds an image's attention (SD at 512²: the 64² level alone is 64 MiB in
# float32) and what its memo adds (the aggregation, 64 MiB more): a few hundred MiB per image.
DEFAULT_CAPACITY = 4


class BoundedMemo(OrderedDict):
    """A bundle memo (``dsseg.methods.base.memoised``) of at most ``limit`` values: reading one makes it
    the most recent, and adding one past the limit drops the least recently used."""

    def __init__(self, limit: int = MEMO_ENTRIES) -> None:
        super().__init__()
        self.limit = limit

    def __getitem__(self, key):
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass(frozen=True)
class ExploredImage:
    """An image the explorer segments: ``rgb`` (H, W, 3) uint8, ``digest`` naming its pixels in the cache."""

    rgb: np.ndarray
    digest: str
    name: str = "image"

    @classmethod
    def of(cls, rgb: np.ndarray, name: str = "image") -> ExploredImage:
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image; got shape {rgb.shape}")
        digest = hashlib.blake2b(repr(rgb.shape).encode() + rgb.tobytes(), digest_size=12).hexdigest()
        return cls(rgb, digest, name)


@dataclass(frozen=True)
class CachedForward:
    """One image's forward: its one-image bundle (with a memo), the model-input geometry, the captions
    the prompt read (None when it read none) and what the forward cost (ms)."""

    bundle: AttentionBundle
    geometry: Geometry
    captions: list[str] | None
    forward_ms: float


@dataclass(frozen=True)
class LegendEntry:
    """One segment as the legend lists it: ``area`` in pixels, ``fraction`` of the image, ``bbox``
    [x, y, w, h] in pixels, ``colour`` its overlay colour (r, g, b)."""

    segment_id: int
    colour: tuple[int, int, int]
    name: str | None
    score: float | None
    area: int
    fraction: float
    bbox: list[float]


@dataclass(frozen=True)
class View:
    """One re-segmentation of an image.

    ``segmentation``: at the image's original size, after the tree cut. ``depth``/``max_depth``: the
    NCut tree depth shown and the depth of the whole tree (None for other methods). ``forward_cached``:
    whether the attention came from the cache. ``timings_ms``: ``forward`` (0 when cached) and
    ``segment`` (the method on the cached attention, the cut, naming and the map to the original frame).
    """

    image: ExploredImage
    spec: MethodSpec
    segmentation: Segmentation
    depth: int | None
    max_depth: int | None
    forward_cached: bool
    timings_ms: dict[str, float]

    @property
    def caption(self) -> str | None:
        return self.segmentation.caption

    def overlay(self) -> np.ndarray:
        """(H, W, 3) uint8: the image blended with the segment colours, boundaries white."""
        return overlay(self.image.rgb, self.segmentation.labels)

    def segments(self) -> list[dict]:
        """The segments as COCO RLE dicts with label, score and parent (``Segmentation.to_rles``)."""
        return self.segmentation.to_rles()

    def legend(self, segments: list[dict] | None = None) -> list[LegendEntry]:
        """Every segment in id order (``segments``: ``self.segments()`` when already made)."""
        segments = self.segments() if segments is None else segments
        colours = palette(len(segments) and max(s["segment_id"] for s in segments) + 1)
        total = float(self.segmentation.labels.size)
        return [
            LegendEntry(
                s["segment_id"],
                tuple(int(c) for c in colours[s["segment_id"]]),
                s["label"],
                s["score"],
                s["area"],
                s["area"] / total,
                s["bbox"],
            )
            for s in segments
        ]

    def label_png(self) -> bytes:
        """The label map as a 16-bit greyscale PNG (pixel value = segment id), the image's size."""
        buffer = io.BytesIO()
        Image.fromarray(self.segmentation.labels.astype(np.uint16)).save(buffer, format="PNG")
        return buffer.getvalue()

    def rle_json(self, segments: list[dict] | None = None) -> str:
        """The segments as JSON: image name and size, method and parameters, and each segment's COCO
        RLE (``counts`` a string; ``pycocotools.mask.decode`` reads it after ``.encode()``)."""
        segments = self.segments() if segments is None else segments
        height, width = self.segmentation.labels.shape
        record = {
            "image": self.image.name,
            "height": height,
            "width": width,
            "method": self.spec.method,
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in self.spec.params.items()},
            "depth": self.depth,
            "caption": self.caption,
            "segments": segments,
        }
        return json.dumps(record, indent=1)


def spec_from_controls(
    method: str,
    kl_threshold: float,
    iterations: int,
    refine: bool,
    power: int,
    stopping: str,
    ncut_threshold: float,
    background_threshold: float,
    classes_text: str,
    naming: str,
    extra: Mapping[str, Any] | None = None,
) -> MethodSpec:
    """The ``MethodSpec`` the Image tab's controls describe (``ConfigError`` for what cannot work):
    the chosen method's controls, class names (labels for openvocab, names for the others when
    ``naming`` is ``classes``) or naming by caption, over ``extra`` (parameters every view takes,
    e.g. ``image_size=256``; the method's controls win)."""
    params: dict[str, Any] = dict(extra or {})
    if method == "diffseg":
        params.update(kl_threshold=float(kl_threshold), iterations=int(iterations), refine=bool(refine))
    elif method == "ncut":
        params.update(power=int(power), stopping=stopping)
        if stopping == "threshold":
            params["threshold"] = float(ncut_threshold)
    elif method == "openvocab":
        params["background_threshold"] = float(background_threshold)
    classes = parse_classes(classes_text or "") or []
    if naming == "caption" and method != "openvocab":
        params["naming"] = "caption"
    elif classes and (naming == "classes" or method == "openvocab"):
        params["classes"] = tuple(classes)
    return MethodSpec(method, params)


class ImageExplorer:
    """Segments images interactively: ``view(image, spec)`` reuses a cached forward when it can.

    ``backbone``: the default backbone name (``tiny``, ``sd-v1-random``, a hub id or folder); views
    may name another. ``captioner``: a BLIP name for ``naming="caption"`` (loaded on first use).
    ``capacity``: forwards kept. ``compile``: as ``load_backbone``'s. ``params``: parameters every view
    takes under the controls' (``spec_from_controls``), e.g. ``{"image_size": 256}``. Thread-safe: one view is computed at a time.
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        device: str | None = None,
        dtype: str | None = None,
        offline: bool = False,
        captioner: str | None = None,
        capacity: int = DEFAULT_CAPACITY,
        compile: bool = False,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be ≥ 1 (forwards kept); got {capacity}")
        self.backbone_name = backbone
        self.device, self.dtype, self.offline, self.compile = device, dtype, offline, compile
        self.backbones: dict[str, Backbone] = {}
        self.captioner_name = captioner
        self.params = dict(params or {})
        self.capacity = capacity
        self.forwards: OrderedDict[tuple, CachedForward] = OrderedDict()
        self.lock = threading.Lock()

    def backbone(self, name: str | None = None) -> Backbone:
        """The backbone ``name`` (default: the explorer's), loaded once."""
        name = name or self.backbone_name
        if name not in self.backbones:  # one model in memory: another name replaces it
            self.backbones = {
                name: load_backbone(
                    name, device=self.device, dtype=self.dtype, offline=self.offline, compile=self.compile
                )
            }
        return self.backbones[name]

    def captioner(self):
        if self.captioner_name is None:
            return None
        from dsseg.model.captioner import cached_captioner

        return cached_captioner(self.captioner_name, device=self.device, dtype=self.dtype)

    def view(
        self, image: ExploredImage, spec: MethodSpec, backbone: str | None = None, depth: int | None = None
    ) -> View:
        """``image`` segmented by ``spec`` (ncut: its tree cut at ``depth``, None = the whole tree)."""
        config = spec.resolved
        if depth is not None and config.method != "ncut":
            raise ValueError(f"depth cuts NCut's split tree; method {config.method!r} builds none")
        name = backbone or self.backbone_name
        with self.lock:
            loaded = self.backbone(name)
            key = (image.digest, name, str(loaded.device), str(loaded.dtype), forward_groups([config])[0][0])
            cached = key in self.forwards
            if cached:
                self.forwards.move_to_end(key)
            else:
                self.forwards[key] = self.forward(loaded, spec, image)
                while len(self.forwards) > self.capacity:
                    self.forwards.popitem(last=False)
            entry = self.forwards[key]
            start = time.perf_counter()
            timer = StageTimer(loaded.device)
            # A config seen before (τ back to an earlier value, the depth slider) is not segmented again:
            # run_config keeps its results in the cached bundle's memo.
            results = run_config(config, entry.bundle, timer)
            max_depth = None
            if config.method == "ncut":
                from dsseg.methods.ncut import cut_result, tree_depth

                max_depth = tree_depth(results[0].parents)
                if depth is not None and depth < max_depth:
                    results = [cut_result(result, depth) for result in results]
            results = name_segments(config, entry.bundle, results, timer)
            caption = entry.captions[0] if entry.captions else None
            segmentation = to_segmentation(results[0], entry.geometry, config.method, timer, caption)
            timings = {"forward": 0.0 if cached else entry.forward_ms, "segment": 1000 * (time.perf_counter() - start)}
        shown = None if max_depth is None else (max_depth if depth is None else min(depth, max_depth))
        return View(image, spec, segmentation, shown, max_depth, cached, timings)

    def forward(self, backbone: Backbone, spec: MethodSpec, image: ExploredImage) -> CachedForward:
        """One UNet forward of ``image`` for ``spec``'s extraction (captioning first when it reads captions)."""
        start = time.perf_counter()
        segmenter = Segmenter(backbone, spec, captioner=self.captioner())
        batch = segmenter.batch([image.rgb])
        bundle, captions = segmenter.forward(batch)
        bundle = dataclasses.replace(bundle, memo=BoundedMemo())
        return CachedForward(bundle, batch.geometries[0], captions, 1000 * (time.perf_counter() - start))
