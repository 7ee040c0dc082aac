"""The one orchestration core: a backbone and one or more method configs, applied to batches.

"Filter classes → extract → run each method config → map to the original image" lives here
and only here. Configs whose extraction differs only in what is captured share one UNet forward
(``forward_groups``); every config then segments the shared attention. The Python API, the Ray
model stage (``dsseg.job.stages``) and the benchmark all call a ``Segmenter``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from dsseg.errors import ConfigError
from dsseg.io.images import Geometry
from dsseg.methods import get_method, run_method
from dsseg.methods.base import MethodResult
from dsseg.model.backbone import Backbone
from dsseg.model.class_filters import ClassFilter, filter_classes
from dsseg.model.config import ExtractConfig, Preparation
from dsseg.model.extract import AttentionExtractor, to_model_input
from dsseg.segmentation import Segmentation, segmentation_from_labels
from dsseg.spec import MethodSpec, SegmentConfig
from dsseg.timing import StageTimer


def to_segmentation(result: MethodResult, geometry: Geometry, method: str, timer: StageTimer) -> Segmentation:
    """A method's model-frame result → ``Segmentation`` in ``geometry``'s original frame."""
    return segmentation_from_labels(
        result.labels.cpu().numpy(),
        geometry,
        method,
        timer,
        result.names,
        result.scores,
        result.parents,
        result.background,
    )


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


def shared_preparation(configs: Sequence[SegmentConfig]) -> Preparation:
    """The model input every config takes; ``ConfigError`` when they differ (one input per image)."""
    preparations = {config.extraction.preparation for config in configs}
    if len(preparations) > 1:
        raise ConfigError(
            "image_size",
            "all configs of a run must share image_size, geometry and antialias: run the others as another job",
        )
    return configs[0].extraction.preparation


@dataclass(frozen=True)
class ConfigOutput:
    """One config's results for a batch: per image, its model-frame ``MethodResult``; and the
    batch's per-stage milliseconds (the shared forward's stages and this config's own)."""

    results: list[MethodResult]
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class ForwardGroup:
    """An extractor and the indices of the configs that segment its attention."""

    extractor: AttentionExtractor
    members: list[int]


class Segmenter:
    """A backbone and one or more method configs: build once, call per batch.

    ``specs``: ``MethodSpec``s, or a method name with ``params`` (one config). ``class_filter``
    narrows each image's candidate classes for configs that prompt with classes.
    """

    def __init__(
        self,
        backbone: Backbone,
        specs: str | MethodSpec | Sequence[MethodSpec] = "diffseg",
        params: dict | None = None,
        class_filter: ClassFilter | None = None,
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
    ) -> list[ConfigOutput | None]:
        """pixels (B, h, w, 3) uint8 prepared inputs of one size → per config (None unless in
        ``wanted``, default all) its results in the model frame and the batch's timings.

        ``classes``: per image, candidate class names replacing the configs' own (None entries keep
        them), narrowed by the class filter. ``timer`` collects the shared stages (encode, invert,
        unet); each config's own stages (aggregate, segment) are timed apart.
        """
        backbone = self.backbone
        timer = timer or StageTimer(backbone.device)
        model_input = to_model_input(pixels, backbone.device, backbone.dtype)
        outputs: list[ConfigOutput | None] = [None] * len(self.configs)
        for group in self.groups:
            members = [i for i in group.members if wanted is None or i in wanted]
            if not members:
                continue
            group_classes = classes
            prompting = group.extractor.config.prompting
            if prompting.uses_classes and self.class_filter is not None:
                group_classes = filter_classes(
                    self.class_filter, list(pixels), classes or [None] * len(pixels), prompting.classes
                )
            bundle = group.extractor(model_input, timer, group_classes)
            for i in members:
                config = self.configs[i]
                own = StageTimer(backbone.device)
                results = run_method(get_method(config.method), bundle, config.params, own, config.naming)
                outputs[i] = ConfigOutput(results, own.ms)
            del bundle
        return [None if out is None else ConfigOutput(out.results, {**timer.ms, **out.timings_ms}) for out in outputs]

    def segment_all(
        self,
        pixels: np.ndarray,
        geometries: Sequence[Geometry],
        timer: StageTimer | None = None,
        classes: Sequence[Sequence[str] | None] | None = None,
    ) -> list[list[Segmentation]]:
        """Like ``segment``, then each result to its image's original frame: [config][image]."""
        timer = timer or StageTimer(self.backbone.device)
        outputs = self.segment(pixels, classes, timer)
        out = []
        for config, output in zip(self.configs, outputs):
            own = StageTimer(self.backbone.device)
            own.ms.update(output.timings_ms)
            out.append(
                [
                    to_segmentation(result, geometry, config.method, own)
                    for result, geometry in zip(output.results, geometries)
                ]
            )
        return out

    def __call__(
        self,
        pixels: np.ndarray,
        geometries: Sequence[Geometry],
        timer: StageTimer | None = None,
        classes: Sequence[Sequence[str] | None] | None = None,
    ) -> list[Segmentation]:
        """The segmentations of a one-config segmenter at each image's original size (see
        ``segment_all``; ``timer`` then also holds every stage, batch totals)."""
        _ = self.config
        timer = timer or StageTimer(self.backbone.device)
        output = self.segment(pixels, classes, timer)[0]
        timer.ms.update(output.timings_ms)
        return [
            to_segmentation(result, geometry, self.config.method, timer)
            for result, geometry in zip(output.results, geometries)
        ]


__all__ = [
    "ConfigOutput",
    "ForwardGroup",
    "Segmentation",
    "Segmenter",
    "forward_groups",
    "shared_preparation",
    "to_segmentation",
]
