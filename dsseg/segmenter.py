"""The one orchestration core: a backbone and one or more method configs, applied to batches.

"Caption → filter classes → extract → run each method config → map to the original image" lives
here and only here. Configs whose extraction differs only in what is captured share one UNet forward
(``forward_groups``); every config then segments the shared attention. The Python API, the Ray
model stage (``dsseg.job.stages``) and the benchmark all call a ``Segmenter``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from dsseg.checks import check_candidates, check_captioner, shared_preparation
from dsseg.errors import ConfigError
from dsseg.io.images import Geometry
from dsseg.methods import get_method, run_method
from dsseg.methods.base import MethodResult
from dsseg.model.backbone import Backbone
from dsseg.model.class_filters import ClassFilter, filter_classes, needs_captions
from dsseg.model.config import CLASS_PLACEHOLDER, ExtractConfig
from dsseg.model.extract import AttentionBundle, AttentionExtractor, to_model_input
from dsseg.model.nouns import CaptionNoun, caption_nouns
from dsseg.model.prompts import ImageTexts, phrases_apart
from dsseg.segmentation import Segmentation, segmentation_from_labels
from dsseg.spec import MethodSpec, SegmentConfig
from dsseg.timing import StageTimer


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


def located_nouns(tokenizer, caption: str) -> list[CaptionNoun]:
    """The nouns of ``caption`` whose words appear apart as whole tokens of its CLIP tokens (the
    positions ``dsseg.model.prompts.phrases_apart`` gives them; a noun CLIP splits otherwise is left out)."""
    located: list[CaptionNoun] = []
    for noun in caption_nouns(caption):
        try:
            phrases_apart(tokenizer, caption, [n.phrase for n in (*located, noun)])
        except ValueError:
            continue
        located.append(noun)
    return located


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


@dataclass(frozen=True)
class ConfigOutput:
    """One config's results for a batch: per image, its model-frame ``MethodResult``; the batch's
    per-stage milliseconds (the shared forward's stages and this config's own); and per image the
    captions this config read (None when it read none)."""

    results: list[MethodResult]
    timings_ms: dict[str, float]
    captions: list[str] | None = None


@dataclass(frozen=True)
class ForwardGroup:
    """An extractor and the indices of the configs that segment its attention."""

    extractor: AttentionExtractor
    members: list[int]


class Segmenter:
    """A backbone and one or more method configs: build once, call per batch.

    ``specs``: ``MethodSpec``s, or a method name with ``params`` (one config). ``class_filter``
    narrows each image's candidate classes for configs that prompt with classes. ``captioner``
    (``dsseg.model.captioner.Captioner``): for configs named by captions or with caption
    descriptors, and for filters that read captions; each batch is captioned once.
    """

    def __init__(
        self,
        backbone: Backbone,
        specs: str | MethodSpec | Sequence[MethodSpec] = "diffseg",
        params: dict | None = None,
        class_filter: ClassFilter | None = None,
        captioner=None,
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
        self.groups = [
            ForwardGroup(AttentionExtractor(backbone, extraction), members)
            for extraction, members in forward_groups(self.configs)
        ]
        self.class_filter = class_filter
        self.captioner = captioner
        check_captioner(
            self.configs, captioner=captioner is not None, filter_reads_captions=needs_captions(class_filter)
        )

    @property
    def config(self) -> SegmentConfig:
        """The config of a one-config segmenter."""
        if len(self.configs) != 1:
            raise ValueError(f"this segmenter holds {len(self.configs)} configs; pick one from .configs")
        return self.configs[0]

    def prepare(self, rgb: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """(H, W, 3) uint8 → ((h, w, 3) uint8 model input, geometry): CPU work, shared by every config."""
        return self.preparation.prepare(rgb)

    def segment(
        self,
        pixels: np.ndarray,
        classes: Sequence[Sequence[str] | None] | None = None,
        timer: StageTimer | None = None,
        wanted: Collection[int] | None = None,
        sizes: Sequence[tuple[int, int]] | None = None,
        keys: Sequence[tuple[str, str]] | None = None,
    ) -> list[ConfigOutput | None]:
        """pixels (B, h, w, 3) uint8 prepared inputs of one size → per config (None unless in
        ``wanted``, default all) its results in the model frame and the batch's timings.

        ``classes``: per image, candidate class names replacing the configs' own (None entries keep
        them), narrowed by the class filter. ``timer`` collects the shared stages (encode, invert,
        unet); each config's own stages (aggregate, segment) are timed apart. ``sizes``: per image,
        the (h, w) pixels its input was resized from (methods that label at the image's size
        use them; their labels then come at that size). ``keys``: per image, (image id, source),
        for class filters that look images up (``candidates:FILE``).
        """
        timer = timer or StageTimer(self.backbone.device)
        outputs: list[ConfigOutput | None] = [None] * len(self.configs)
        for members, bundle, read in self.attention(pixels, classes, timer, wanted, sizes, keys):
            for i in members:
                config = self.configs[i]
                own = StageTimer(self.backbone.device)
                results = run_method(get_method(config.method), bundle, config.params, own, config.naming)
                outputs[i] = ConfigOutput(results, own.ms, read)
            del bundle
        return [
            None if out is None else ConfigOutput(out.results, {**timer.ms, **out.timings_ms}, out.captions)
            for out in outputs
        ]

    def attention(
        self,
        pixels: np.ndarray,
        classes: Sequence[Sequence[str] | None] | None = None,
        timer: StageTimer | None = None,
        wanted: Collection[int] | None = None,
        sizes: Sequence[tuple[int, int]] | None = None,
        keys: Sequence[tuple[str, str]] | None = None,
    ) -> Iterator[tuple[list[int], AttentionBundle, list[str] | None]]:
        """The forwards ``segment`` runs, one forward group at a time: (the indices of its configs in
        ``wanted``, its ``AttentionBundle``, the captions it read or None). Groups without a wanted
        config are skipped; each bundle is made only when the previous one has been taken.
        ``sizes`` and ``keys`` as in ``segment``."""
        backbone = self.backbone
        timer = timer or StageTimer(backbone.device)
        model_input = to_model_input(pixels, backbone.device, backbone.dtype)
        images = list(pixels)
        captions = LazyCaptions(self.captioner, images, timer)
        for group in self.groups:
            members = [i for i in group.members if wanted is None or i in wanted]
            if not members:
                continue
            group_classes, texts, read = self.prompt_inputs(group.extractor, images, classes, captions, keys)
            yield members, group.extractor(model_input, timer, group_classes, texts, sizes), read

    def prompt_inputs(
        self,
        extractor: AttentionExtractor,
        images: list[np.ndarray],
        classes: Sequence[Sequence[str] | None] | None,
        captions: LazyCaptions,
        keys: Sequence[tuple[str, str]] | None = None,
    ) -> tuple[Sequence[Sequence[str] | None] | None, list[ImageTexts] | None, list[str] | None]:
        """What one forward group prompts each image with: (class lists, texts, the captions read).

        Named by captions: each image's caption nouns, prompted with the caption. Otherwise the
        given or configured candidates, narrowed by the class filter, and with caption descriptors
        each class prompt continued by a conditional caption."""
        prompting = extractor.config.prompting
        if prompting.caption_names:
            nouns = [located_nouns(self.backbone.tokenizer, caption) for caption in captions.get()]
            texts = [
                ImageTexts(caption, {noun.name: noun.phrase for noun in found})
                for caption, found in zip(captions.get(), nouns)
            ]
            return [[noun.name for noun in found] for found in nouns], texts, captions.get()
        if not prompting.uses_classes:
            return classes, None, None
        supplied = getattr(self.class_filter, "supplies_classes", False)  # a candidate file lists them
        candidates = extractor.class_lists(len(images), classes)
        config = next(self.configs[g.members[0]] for g in self.groups if g.extractor is extractor)
        check_candidates(config, candidates, filter_supplies_classes=supplied)
        read = None
        if self.class_filter is not None:
            read = captions.get() if needs_captions(self.class_filter) else None
            candidates = filter_classes(self.class_filter, images, candidates, prompting.classes, read, keys)
        if not prompting.caption_descriptors:
            return candidates, None, read
        texts, written = conditional_texts(captions, candidates, prompting.class_template, prompting.spelled)
        return candidates, texts, written

    def segment_all(
        self,
        pixels: np.ndarray,
        geometries: Sequence[Geometry],
        timer: StageTimer | None = None,
        classes: Sequence[Sequence[str] | None] | None = None,
        keys: Sequence[tuple[str, str]] | None = None,
    ) -> list[list[Segmentation]]:
        """Like ``segment``, then each result to its image's original frame: [config][image]."""
        timer = timer or StageTimer(self.backbone.device)
        outputs = self.segment(pixels, classes, timer, sizes=source_sizes(geometries), keys=keys)
        out = []
        for config, output in zip(self.configs, outputs):
            own = StageTimer(self.backbone.device)
            own.ms.update(output.timings_ms)
            out.append(
                [
                    to_segmentation(result, geometry, config.method, own, caption)
                    for result, geometry, caption in zip(output.results, geometries, captions_of(output))
                ]
            )
        return out

    def __call__(
        self,
        pixels: np.ndarray,
        geometries: Sequence[Geometry],
        timer: StageTimer | None = None,
        classes: Sequence[Sequence[str] | None] | None = None,
        keys: Sequence[tuple[str, str]] | None = None,
    ) -> list[Segmentation]:
        """The segmentations of a one-config segmenter at each image's original size (see
        ``segment_all``; ``timer`` then also holds every stage, batch totals)."""
        _ = self.config
        timer = timer or StageTimer(self.backbone.device)
        output = self.segment(pixels, classes, timer, sizes=source_sizes(geometries), keys=keys)[0]
        timer.ms.update(output.timings_ms)
        return [
            to_segmentation(result, geometry, self.config.method, timer, caption)
            for result, geometry, caption in zip(output.results, geometries, captions_of(output))
        ]


class LazyCaptions:
    """A batch's captions, made on first use and kept for its other forward groups: one caption per
    image (``get``), and conditional continuations per (image, prompt) (``complete``)."""

    def __init__(self, captioner, images: list[np.ndarray], timer: StageTimer) -> None:
        self.captioner, self.images, self.timer = captioner, images, timer
        self.captions: list[str] | None = None
        self.continuations: dict[tuple[int, str], str] = {}

    def get(self) -> list[str]:
        if self.captions is None:
            with self.timer.stage("caption"):
                self.captions = self.captioner.caption(self.images)
        return self.captions

    def complete(self, pairs: Sequence[tuple[int, str]]) -> list[str]:
        missing = list(dict.fromkeys(pair for pair in pairs if pair not in self.continuations))
        if missing:
            with self.timer.stage("caption"):
                self.continuations.update(zip(missing, self.captioner.complete(self.images, missing)))
        return [self.continuations[pair] for pair in pairs]


def box_size(box: Sequence[float]) -> tuple[int, int]:
    """The (h, w) pixels of a crop box (top, left, height, width), which may be fractional."""
    return max(1, round(box[2])), max(1, round(box[3]))


def source_sizes(geometries: Sequence[Geometry]) -> list[tuple[int, int]]:
    """Per image, the (h, w) pixels of the box its model input was resized from."""
    return [box_size(g.box) for g in geometries]


def conditional_texts(
    captions: LazyCaptions, names: Sequence[Sequence[str]], template: str, spelled=lambda name: name
) -> tuple[list[ImageTexts], list[str | None]]:
    """Per image, each class's prompt (``template`` filled with the class's ``spelled`` words)
    continued by the captioner conditioned on it (DiffSegmenter's augmented prompts) → (the
    continuations as ``ImageTexts``, the full captions of each image joined by "; ")."""

    def prompt(name: str) -> str:
        return template.replace(CLASS_PLACEHOLDER, spelled(name))

    pairs = [(i, prompt(name)) for i, image_names in enumerate(names) for name in image_names]
    words = iter(captions.complete(pairs))
    texts, written = [], []
    for image_names in names:
        continuations = {name: next(words) for name in image_names}
        texts.append(ImageTexts(continuations=continuations))
        texts_of_image = [f"{prompt(n)} {w}".strip() for n, w in continuations.items()]
        written.append("; ".join(texts_of_image) or None)
    return texts, written


def captions_of(output: ConfigOutput) -> list[str | None]:
    """Per image, the caption a config read (None for each image when it read none)."""
    return output.captions if output.captions is not None else [None] * len(output.results)


__all__ = [
    "ConfigOutput",
    "ForwardGroup",
    "Segmentation",
    "Segmenter",
    "forward_groups",
    "shared_preparation",
    "to_segmentation",
]
