"""Candidate-class filters: narrow a vocabulary to the classes an image plausibly shows.

In the zero-shot setting every image starts with a whole vocabulary (VOC-20, COCO-80, …); a
filter keeps the likely ones before the open-vocabulary method prompts the UNet with them
(DiffSegmenter filters with caption nouns and CLIP). A filter is any callable

    filter(images, candidates) -> kept

with ``images`` a list of (H, W, 3) uint8 arrays and ``candidates``/``kept`` one list of class
names per image (``kept`` ⊆ ``candidates``, in candidate order, where the image has candidates).
A filter with the attribute ``needs_captions = True`` is also given ``captions=`` (one caption per
image, from the run's captioner); one with ``needs_keys = True`` is given ``keys=`` (per image, its
(image id, source URI)). ``load_class_filter(spec)`` builds one from a string, so a Ray job can
name it: ``clip:MODEL`` (a CLIP checkpoint: hub id or local folder, loaded only here), ``caption``
(the candidates the image's caption names), ``caption+clip:MODEL`` (either), ``candidates:FILE``
(the classes a file lists per image: DiffSegmenter's released lists or your own, see
``dsseg.model.candidates``) or ``package.module:factory`` (called with no arguments).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dsseg.errors import WeightsNotFoundError
from dsseg.model.filter_specs import check_filter_spec
from dsseg.model.nouns import caption_nouns, classes_named

ClassFilter = Callable[[Sequence[np.ndarray], Sequence[Sequence[str]]], list[list[str]]]

# OpenAI CLIP's input normalisation (its preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClassFilterNotFoundError(WeightsNotFoundError):
    """A filter's model or factory could not be loaded; the message says what to provide."""


class CLIPClassFilter:
    """Keeps the candidates CLIP finds likely: the softmax over an image's candidate prompts
    (``template`` with ``{class}``), keeping those with probability ≥ ``min_probability``, at most
    ``top_k`` and always the best one."""

    def __init__(
        self,
        model: str,
        device: str | None = None,
        min_probability: float = 0.05,
        top_k: int | None = None,
        template: str = "a photo of a {class}",
        offline: bool = False,
    ) -> None:
        from transformers import CLIPModel, CLIPTokenizer

        if not 0.0 <= min_probability <= 1.0 or (top_k is not None and top_k < 1):
            raise ValueError(f"min_probability must be in [0, 1] and top_k ≥ 1; got {min_probability}, {top_k}")
        try:
            self.model = CLIPModel.from_pretrained(model, local_files_only=offline).eval().requires_grad_(False)
            self.tokenizer = CLIPTokenizer.from_pretrained(model, local_files_only=offline)
        except OSError as error:
            raise ClassFilterNotFoundError(
                f"Could not load a CLIP model from {model!r} ({str(error).splitlines()[0]}). Give a local folder in "
                "transformers layout (config.json, weights, tokenizer files), e.g. one saved from "
                "openai/clip-vit-large-patch14 on a machine with internet access, or a hub id reachable from here."
            ) from error
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.size = int(self.model.config.vision_config.image_size)
        self.min_probability, self.top_k, self.template = min_probability, top_k, template

    def pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Images → (B, 3, S, S) float32 CLIP input: shorter side resized to S (bicubic), centre crop, normalised."""
        batch = []
        for image in images:
            x = torch.as_tensor(np.array(image, dtype=np.float32, copy=True)).permute(2, 0, 1)[None].div_(255)
            height, width = x.shape[-2:]
            scale = self.size / min(height, width)
            size = (max(self.size, round(height * scale)), max(self.size, round(width * scale)))
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
            top, left = (size[0] - self.size) // 2, (size[1] - self.size) // 2
            batch.append(x[0, :, top : top + self.size, left : left + self.size])
        mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
        return ((torch.stack(batch) - mean) / std).to(self.device)

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray], candidates: Sequence[Sequence[str]]) -> list[list[str]]:
        names = sorted({name for names in candidates for name in names})
        if not names:
            return [[] for _ in images]
        prompts = [self.template.replace("{class}", name) for name in names]
        tokens = self.tokenizer(prompts, padding=True, return_tensors="pt").to(self.device)
        logits = self.model(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=self.pixels(images)
        ).logits_per_image
        column = {name: i for i, name in enumerate(names)}
        kept = []
        for row, image_candidates in zip(logits.float().cpu(), candidates):
            if not image_candidates:
                kept.append([])
                continue
            probabilities = row[[column[name] for name in image_candidates]].softmax(dim=0)
            order = probabilities.argsort(descending=True)[: self.top_k]
            chosen = {int(order[0])} | {int(i) for i in order if probabilities[i] >= self.min_probability}
            kept.append([name for i, name in enumerate(image_candidates) if i in chosen])
        return kept


class CaptionClassFilter:
    """Keeps the candidates an image's caption names: its nouns (``dsseg.model.nouns``) matched to
    the candidate names, synonyms included ("man" keeps "person"). None named: none kept."""

    needs_captions = True

    def __call__(
        self, images: Sequence[np.ndarray], candidates: Sequence[Sequence[str]], captions: Sequence[str]
    ) -> list[list[str]]:
        return [
            classes_named([noun.name for noun in caption_nouns(caption)], names)
            for caption, names in zip(captions, candidates)
        ]


class UnionClassFilter:
    """Keeps the candidates any of ``filters`` keeps (DiffSegmenter: caption nouns ∪ CLIP)."""

    def __init__(self, *filters: ClassFilter) -> None:
        self.filters = filters
        self.needs_captions = any(needs_captions(f) for f in filters)

    def __call__(self, images, candidates, captions: Sequence[str] | None = None) -> list[list[str]]:
        kept = [call_filter(f, images, candidates, captions) for f in self.filters]
        return [[name for name in names if any(name in part[i] for part in kept)] for i, names in enumerate(candidates)]


def needs_captions(class_filter: ClassFilter | None) -> bool:
    """Whether ``class_filter`` reads the images' captions."""
    return bool(getattr(class_filter, "needs_captions", False))


def call_filter(
    class_filter: ClassFilter,
    images,
    candidates,
    captions: Sequence[str] | None,
    keys: Sequence[tuple[str, str]] | None = None,
) -> list[list[str]]:
    """``class_filter`` on a batch, given the captions and the image keys when it reads them."""
    extra = {}
    if needs_captions(class_filter):
        if captions is None:
            raise ValueError("this class filter reads captions: give the segmenter a captioner")
        extra["captions"] = captions
    if getattr(class_filter, "needs_keys", False):
        extra["keys"] = keys
    return class_filter(images, candidates, **extra)


def load_class_filter(spec: str, device: str | None = None, offline: bool = False) -> ClassFilter:
    """``clip:MODEL`` → ``CLIPClassFilter(MODEL)``; ``caption`` → ``CaptionClassFilter()``;
    ``caption+clip:MODEL`` → their union; ``candidates:FILE`` → ``CandidateFileFilter(FILE)``;
    ``package.module:factory`` → ``factory()``."""
    check_filter_spec(spec)
    if spec == "caption":
        return CaptionClassFilter()
    kind, _, target = spec.partition(":")
    if kind == "candidates":
        from dsseg.model.candidates import CandidateFileFilter

        return CandidateFileFilter(target)
    if kind == "caption+clip":
        return UnionClassFilter(CaptionClassFilter(), load_class_filter(f"clip:{target}", device, offline))
    if kind == "clip":
        local = Path(target).expanduser()
        return CLIPClassFilter(str(local) if local.exists() else target, device=device, offline=offline)
    try:
        factory = getattr(importlib.import_module(kind), target)
    except (ImportError, AttributeError) as error:
        raise ClassFilterNotFoundError(
            f"class_filter {spec!r}: cannot import {target} from {kind} ({error})"
        ) from error
    return factory()


def filter_classes(
    class_filter: ClassFilter | None,
    images: Sequence[np.ndarray],
    classes: Sequence[Sequence[str] | None],
    default: Sequence[str],
    captions: Sequence[str] | None = None,
    keys: Sequence[tuple[str, str]] | None = None,
) -> list[list[str]]:
    """Each image's candidates (its own list, else ``default``), narrowed by ``class_filter`` if any
    (given ``captions`` and ``keys`` when it reads them). An image without candidates takes what
    the filter gives it (a candidate file lists them)."""
    candidates = [list(default if names is None else names) for names in classes]
    if class_filter is None:
        return candidates
    kept = call_filter(class_filter, list(images), candidates, captions, keys)
    if len(kept) != len(candidates) or any(c and not set(k) <= set(c) for k, c in zip(kept, candidates)):
        raise ValueError("a class filter must return one list per image, each a subset of that image's candidates")
    return [list(k) for k in kept]
