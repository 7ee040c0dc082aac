"""The one orchestration core: a backbone and one or more method configs, applied to batches.

``Segmenter.segment`` is the recipe, and it lives here only: 1. caption → 2. each image's candidate
classes, filtered → 3. extract attention → 4. segment with each config → 5. name the segments → 6. map
each result to its image's original frame. Configs whose extraction differs only in what is captured
share one UNet forward (``forward_groups``); every config then segments the shared attention.

Each step is a function the recipe calls, and that callers who need one step call too: the explorer
(``dsseg.explore.session``) runs ``Segmenter.forward`` once per image, keeps the attention, and
re-runs ``run_config`` → ``name_segments`` → ``to_segmentation`` on it as controls change; the
benchmark times ``run_config`` and ``name_segments`` against reference code. The Python API
(``dsseg.api``), the command line, the Ray model stage (``dsseg.job.model_stage``: model-frame
results, ``frame="model"``) and the benchmark's timings all call ``segment``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import numpy as np

from dsseg.checks import check_candidates, check_captioner, check_family, clip_candidates, shared_preparation
from dsseg.errors import ConfigError
from dsseg.io.images import Geometry
from dsseg.methods import get_method, name_results
from dsseg.methods.base import MethodResult, memoised
from dsseg.model.backbone import AnyBackbone
from dsseg.model.caption_prompts import LazyCaptions, conditional_texts, located_nouns
from dsseg.model.class_filters import ClassFilter, filter_classes, needs_captions
from dsseg.model.config import ExtractConfig
from dsseg.model.extract import AttentionBundle, AttentionExtractor, to_model_input
from dsseg.model.prompts import ImageTexts
from dsseg.segmentation import Segmentation, segmentation_from_labels
from dsseg.spec import MethodSpec, SegmentConfig
from dsseg.timing import StageTimer

Frame = Literal["original", "model"]
ClassLists = Sequence[Sequence[str] | None]


@dataclass(frozen=True)
class Batch:
    """Images prepared for a segmenter (``Segmenter.batch`` makes one), all of one model-input size.

    ``pixels``: (B, h, w, 3) uint8 model inputs. ``geometries``: per image, where its input came
    from (``Geometry``: the original (H, W), the crop box, the input (h, w)). ``classes``: per image,
    candidate class names replacing the configs' own (a None entry keeps them; None: every image
    keeps them). ``keys``: per image, (image id, source), for class filters that look images up
    (``candidates:FILE``). Validated at construction.
    """

    pixels: np.ndarray
    geometries: tuple[Geometry, ...]
    classes: tuple[tuple[str, ...] | None, ...] | None = None
    keys: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        pixels = self.pixels
        if not isinstance(pixels, np.ndarray) or pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
            raise ValueError(
                f"pixels must be a (B, h, w, 3) uint8 array; got {getattr(pixels, 'dtype', type(pixels))} "
                f"of shape {getattr(pixels, 'shape', None)}"
            )
        if len(pixels) == 0:
            raise ValueError("a batch holds at least one image")
        object.__setattr__(self, "geometries", tuple(self.geometries))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(None if c is None else tuple(c) for c in self.classes))
        if self.keys is not None:
            object.__setattr__(self, "keys", tuple((str(i), str(s)) for i, s in self.keys))
        for name in ("geometries", "classes", "keys"):
            value = getattr(self, name)
            if value is not None and len(value) != len(pixels):
                raise ValueError(f"{len(value)} {name} given for {len(pixels)} images")
        wrong = [g.input_hw for g in self.geometries if tuple(g.input_hw) != pixels.shape[1:3]]
        if wrong:
            raise ValueError(f"a geometry's input size {wrong[0]} is not the pixels' {pixels.shape[1:3]}")

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """Per image, the (h, w) pixels its input was resized from (the crop box): methods that
        label at the image's size use them."""
        return source_sizes(self.geometries)


@dataclass(frozen=True)
class ModelFrameResult:
    """One image's result for one config in the model-input frame (``segment(..., frame="model")``):
    ``result`` (labels (h, w) at the model input's size, or at the crop box's for methods that label
    at the image's size; names, scores, parents), the ``caption`` the config read (None when it read
    none) and ``timings_ms``: the batch's milliseconds per stage, the shared forward's and the config's own."""

    result: MethodResult
    caption: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ForwardGroup:
    """An extractor and the indices of the configs that segment its attention."""

    extractor: AttentionExtractor
    members: list[int]


class Segmenter:
    """A backbone and one or more method configs: build once, then ``segment`` batches.

    ``specs``: ``MethodSpec``s, or a method name with ``params`` (one config). ``class_filter``
    narrows each image's candidate classes for configs that prompt with classes. ``captioner``
    (``dsseg.model.captioner.Captioner``): for configs named by captions or with caption
    descriptors, and for filters that read captions; each batch is captioned once. ``clips``: the
    CLIP models (``dsseg.model.clip.load_clip``) of configs named by CLIP (``naming="clip"``), by
    their ``clip_model``; those not given are loaded here (cached per name and device).
    """

    def __init__(
        self,
        backbone: AnyBackbone,
        specs: str | MethodSpec | Sequence[MethodSpec] = "diffseg",
        params: dict | None = None,
        class_filter: ClassFilter | None = None,
        captioner=None,
        clips: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(specs, str):
            specs = [MethodSpec(specs, params or {})]
        elif isinstance(specs, MethodSpec):
            specs = [specs]
        if not specs:
            raise ConfigError("configs", "a segmenter needs at least one method config")
        self.backbone = backbone
        self.specs = list(specs)
        self.configs = [spec.resolved for spec in self.specs]
        self.preparation = shared_preparation(self.configs)
        check_family(self.configs, backbone.family)
        check_captioner(
            self.configs, captioner=captioner is not None, filter_reads_captions=needs_captions(class_filter)
        )
        self.groups = [
            ForwardGroup(AttentionExtractor(backbone, extraction), members)
            for extraction, members in forward_groups(self.configs)
        ]
        self.class_filter = class_filter
        self.captioner = captioner
        self.clips = dict(clips or {})
        for config in self.configs:
            if config.clip is not None and config.clip.clip_model not in self.clips:
                from dsseg.model.clip import cached_clip

                self.clips[config.clip.clip_model] = cached_clip(config.clip.clip_model, device=str(backbone.device))

    @property
    def config(self) -> SegmentConfig:
        """The config of a one-config segmenter."""
        if len(self.configs) != 1:
            raise ValueError(f"this segmenter holds {len(self.configs)} configs; pick one from .configs")
        return self.configs[0]

    def prepare(self, rgb: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """(H, W, 3) uint8 → ((h, w, 3) uint8 model input, geometry): CPU work, shared by every config."""
        return self.preparation.prepare(rgb)

    def batch(
        self,
        images: Sequence[np.ndarray],
        classes: ClassLists | None = None,
        keys: Sequence[tuple[str, str]] | None = None,
    ) -> Batch:
        """(H, W, 3) uint8 images (their sizes may differ, their model inputs may not) → a ``Batch``."""
        prepared = [self.prepare(rgb) for rgb in images]
        return Batch(np.stack([p for p, _ in prepared]), tuple(g for _, g in prepared), classes, keys)

    @overload
    def segment(
        self,
        batch: Batch,
        *,
        wanted: Collection[int] | None = None,
        timer: StageTimer | None = None,
        frame: Literal["original"] = "original",
    ) -> list[list[Segmentation]]: ...

    @overload
    def segment(
        self,
        batch: Batch,
        *,
        wanted: Collection[int] | None = None,
        timer: StageTimer | None = None,
        frame: Literal["model"],
    ) -> list[list[ModelFrameResult]]: ...

    def segment(
        self,
        batch: Batch,
        *,
        wanted: Collection[int] | None = None,
        timer: StageTimer | None = None,
        frame: Frame = "original",
    ) -> list[list[Segmentation]] | list[list[ModelFrameResult]]:
        """Segment ``batch`` with every config → [config][image], in the order of ``configs``.

        ``frame="original"``: ``Segmentation``s at each image's original size. ``frame="model"``: the
        ``ModelFrameResult``s before step 6, in the model-input frame (the job's model stage; its write
        stage maps them). ``wanted``: the indices of the configs to run (default all; the others get
        an empty list, and a forward group none of whose configs is wanted is skipped). ``timer``
        collects the shared stages (caption, encode, invert, unet) and whatever the caller timed
        before (decode); each result's ``timings_ms`` holds those and its config's own (aggregate,
        segment; upsample in the original frame), batch totals in milliseconds.
        """
        if frame not in ("original", "model"):
            raise ValueError(f"frame must be 'original' or 'model'; got {frame!r}")
        device = self.backbone.device
        timer = timer or StageTimer(device)
        own = [StageTimer(device) for _ in self.configs]
        results: list[list[MethodResult]] = [[] for _ in self.configs]
        read: list[list[str] | None] = [None] * len(self.configs)
        for i, config in enumerate(self.configs):  # naming="clip" candidates, checked before any forward
            if config.clip is not None and (wanted is None or i in wanted):
                clip_candidates(config, batch.classes, len(batch))
        model_input = to_model_input(batch.pixels, device, self.backbone.dtype)
        # 1. caption: on first use (a config or filter that reads captions), once per batch
        captions = LazyCaptions(self.captioner, list(batch.pixels), timer)
        for group in self.groups:
            members = [i for i in group.members if wanted is None or i in wanted]
            if not members:
                continue
            # 2. candidate classes, filtered → 3. extract attention: one UNet forward per forward group
            bundle, read_by_group = self.forward(batch, group, timer, captions, model_input)
            for i in members:
                found = run_config(self.configs[i], bundle, own[i])  # 4. segment with each config
                config = self.configs[i]
                clip = self.clips.get(config.clip.clip_model) if config.clip else None
                results[i] = name_segments(config, bundle, found, own[i], batch.classes, clip)  # 5. name the segments
                read[i] = read_by_group
            del bundle  # the next group's forward may need the memory
        in_model_frame = [
            model_frame_results(results[i], read[i], {**timer.ms, **own[i].ms}) for i in range(len(self.configs))
        ]
        if frame == "model":
            return in_model_frame
        # 6. map each result to its image's original frame
        return [to_original(config, out, batch.geometries, device) for config, out in zip(self.configs, in_model_frame)]

    def forward(
        self,
        batch: Batch,
        group: ForwardGroup | None = None,
        timer: StageTimer | None = None,
        captions: LazyCaptions | None = None,
        model_input=None,
    ) -> tuple[AttentionBundle, list[str] | None]:
        """Steps 2 and 3 of ``segment`` for one forward ``group`` (default: the first) → (its
        ``AttentionBundle``, per image the captions its prompts read, or None when they read none).
        ``captions`` (step 1, made here when not given) and ``model_input`` ((B, 3, h, w) on the
        model's device) are shared by the groups of one batch."""
        group = group or self.groups[0]
        timer = timer or StageTimer(self.backbone.device)
        if captions is None:
            captions = LazyCaptions(self.captioner, list(batch.pixels), timer)
        if model_input is None:
            model_input = to_model_input(batch.pixels, self.backbone.device, self.backbone.dtype)
        classes, texts, read = self.prompt_inputs(group, batch, captions)
        return group.extractor(model_input, timer, classes, texts, batch.sizes), read

    def prompt_inputs(
        self, group: ForwardGroup, batch: Batch, captions: LazyCaptions
    ) -> tuple[ClassLists | None, list[ImageTexts] | None, list[str] | None]:
        """Step 2 for one forward group: what it prompts each image with (class lists, texts, the
        captions read).

        Named by captions: each image's caption nouns, prompted with the caption. Otherwise the
        given or configured candidates, narrowed by the class filter, and with caption descriptors
        each class prompt continued by a conditional caption."""
        extractor, images = group.extractor, list(batch.pixels)
        prompting = extractor.config.prompting
        if prompting.caption_names:
            nouns = [located_nouns(self.backbone.tokenizer, caption) for caption in captions.get()]
            texts = [
                ImageTexts(caption, {noun.name: noun.phrase for noun in found})
                for caption, found in zip(captions.get(), nouns)
            ]
            return [[noun.name for noun in found] for found in nouns], texts, captions.get()
        if not prompting.uses_classes:
            return batch.classes, None, None
        candidates = extractor.class_lists(len(images), batch.classes)
        supplied = getattr(self.class_filter, "supplies_classes", False)  # a candidate file lists them
        check_candidates(self.configs[group.members[0]], candidates, filter_supplies_classes=supplied)
        read = None
        if self.class_filter is not None:
            read = captions.get() if needs_captions(self.class_filter) else None
            candidates = filter_classes(self.class_filter, images, candidates, prompting.classes, read, batch.keys)
        if not prompting.caption_descriptors:
            return candidates, None, read
        texts, written = conditional_texts(captions, candidates, prompting.class_template, prompting.spelled)
        return candidates, texts, written


def run_config(config: SegmentConfig, bundle: AttentionBundle, timer: StageTimer | None = None) -> list[MethodResult]:
    """Step 4: ``config``'s method on ``bundle`` → per image its model-frame ``MethodResult``. Kept in
    the bundle's memo when it carries one (the explorer's cached forwards), so a config seen before
    is not segmented again."""
    method = get_method(config.method)
    return memoised(bundle, ("results", config), lambda: method.segment(bundle, config.params, timer))


def name_segments(
    config: SegmentConfig,
    bundle: AttentionBundle,
    results: list[MethodResult],
    timer: StageTimer | None = None,
    classes: ClassLists | None = None,
    clip=None,
) -> list[MethodResult]:
    """Step 5: the segments ``run_config`` left unnamed, named from the bundle's class maps by
    ``config.naming`` (unchanged when the bundle holds none). ``naming="clip"``: every segment named
    by ``clip`` (default: ``config``'s CLIP, loaded on first use) among each image's candidates
    (``classes``: per image its own list or None for the config's), from the bundle's images."""
    if config.clip is None:
        return name_results(results, bundle, timer, config.naming)
    from dsseg.methods.clip_naming import name_with_clip

    if clip is None:
        from dsseg.model.clip import cached_clip

        device = bundle.images.device if bundle.images is not None else None
        clip = cached_clip(config.clip.clip_model, device=None if device is None else str(device))
    candidates = clip_candidates(config, classes, len(results))
    return name_with_clip(results, bundle.images, candidates, clip, config.clip, timer)


def model_frame_results(
    results: list[MethodResult], captions: Sequence[str | None] | None, timings_ms: dict[str, float]
) -> list[ModelFrameResult]:
    """Per image, its result with the caption read (None without captions) and the batch's timings."""
    captions = captions if captions is not None else [None] * len(results)
    return [ModelFrameResult(result, caption, timings_ms) for result, caption in zip(results, captions)]


def to_original(
    config: SegmentConfig, results: Sequence[ModelFrameResult], geometries: Sequence[Geometry], device=None
) -> list[Segmentation]:
    """Step 6: one config's model-frame results → ``Segmentation``s at each image's original size;
    their ``timings_ms`` (one dict for the config's images) add the upsampling of all of them, timed
    on ``device`` (a ``torch.device``; CUDA is synchronised)."""
    if not results:
        return []
    timer = StageTimer(device)
    timer.ms.update(results[0].timings_ms)
    return [
        to_segmentation(out.result, geometry, config.method, timer, out.caption)
        for out, geometry in zip(results, geometries)
    ]


def to_segmentation(
    result: MethodResult, geometry: Geometry, method: str, timer: StageTimer, caption: str | None = None
) -> Segmentation:
    """A method's model-frame result → ``Segmentation`` in ``geometry``'s original frame."""
    segmentation = segmentation_from_labels(
        result.labels.cpu().numpy(),
        geometry,
        method,
        timer,
        result.names,
        result.scores,
        result.parents,
        result.background,
    )
    return segmentation if caption is None else dataclasses.replace(segmentation, caption=caption)


def forward_groups(configs: Sequence[SegmentConfig]) -> list[tuple[ExtractConfig, list[int]]]:
    """Configs that can share one forward: (an extraction covering them all, their indices).

    Configs group when their extraction differs only in what is captured; the shared extraction
    captures the union of their levels (all, if any captures all), cross-attention if any needs
    it, and takes the smallest class batch.
    """
    groups: dict[ExtractConfig, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(config.extraction.shared_forward_key(), []).append(index)
    merged = []
    for key, indices in groups.items():
        extractions = [configs[i].extraction for i in indices]
        levels = [e.capture.capture_resolutions for e in extractions]
        union = (
            None if any(level is None for level in levels) else tuple(sorted({r for level in levels for r in level}))
        )
        capture = dataclasses.replace(
            key.capture, capture_resolutions=union, cross_attention=any(e.capture.cross_attention for e in extractions)
        )
        prompting = dataclasses.replace(
            key.prompting, class_batch_size=min(e.prompting.class_batch_size for e in extractions)
        )
        merged.append((dataclasses.replace(key, capture=capture, prompting=prompting), indices))
    return merged


def box_size(box: Sequence[float]) -> tuple[int, int]:
    """The (h, w) pixels of a crop box (top, left, height, width), which may be fractional."""
    return max(1, round(box[2])), max(1, round(box[3]))


def source_sizes(geometries: Sequence[Geometry]) -> list[tuple[int, int]]:
    """Per image, the (h, w) pixels of the box its model input was resized from."""
    return [box_size(g.box) for g in geometries]


__all__ = [
    "Batch",
    "ForwardGroup",
    "ModelFrameResult",
    "Segmentation",
    "Segmenter",
    "forward_groups",
    "name_segments",
    "run_config",
    "to_original",
    "to_segmentation",
]
