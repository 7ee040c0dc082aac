"""Naming segments with CLIP (``naming="clip"``), as DiffCut's released open-vocabulary evaluation does.

What ``eval_diffcut_openvoc.py`` (``associate_label``) and ``tools/clip_classifier.py`` do, step by step:

1. Text side, once per class list: each class name is split into synonyms at its commas (the
   released ``split_labels``: ``"tv, monitor"`` → ``tv``, ``monitor``); every synonym fills the 14
   ViLD templates (``VILD_TEMPLATES``: "a photo of a {}.", …); the texts are encoded by CLIP's text
   tower (128 per call), each embedding L2-normalised, averaged over the 14 templates and normalised
   again: one embedding per synonym.
2. Image side, once per image: the image **whole**, in [0, 1] **without CLIP's mean/std
   normalisation** (the released dataloader divides by 255 and nothing else reaches CLIP), at the
   segmentation's input size (1024² in the released runs; COCO-Object is first resized bilinearly
   to 2048², ``clip_image_size``), goes through the ConvNeXt trunk's stem and stages: dense
   features at 1/32 of the input (``dsseg.model.clip.ClipModel.dense_features``). No crop, no
   masked image, no background fill.
3. Per segment (the released loop over ``torch.unique(mask)``): its binary mask is resized to the
   feature grid by ``nearest-exact`` (the released ``MaskPooling``), binarised (> 0), and the
   features are averaged under it (sum / (count + 1e-8): a segment that no grid sample hits pools
   to zeros and is still classified). The pooled vector goes through the trunk's head (LayerNorm)
   and CLIP's projection MLP (``visual_prediction_forward_convnext``).
4. Logits: the embedding L2-normalised, dotted with every synonym embedding, times
   min(exp(logit_scale), 100); a class's logit is the max over its synonyms ("max ensemble"); the
   released extra "void" column (a copy of the last synonym's logit) is dropped before the softmax
   over the classes, so it never matters. The segment takes the arg-max class (first on ties); no
   threshold. Its score here is that class's softmax probability (the released code keeps none).
5. Classes: the image's candidates with ``background`` put first (``clip_background``, default
   true), as the released COCO-Object and Context runs insert 'background' at index 0 of the class
   list and VOC's 21-class list starts with it: background is a text class like any other, named
   through the same templates. The per-pixel label map is each segment's class (segments of one
   class merge), which is what the segment names here give the evaluation.

Where the released code is silent or outside the repository: the class-name files it reads
(detectron2 metadata of ``openvocab_*`` datasets, from the authors' machine, with prompt-engineered
synonyms as FC-CLIP's ``*_with_prompt_eng.txt``) are not released; dsseg names classes by the names
it is given (commas in a name list synonyms, as those files do).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from dsseg.methods.base import MethodResult
from dsseg.model.clip import Clip
from dsseg.model.vocabularies import BACKGROUND_NAME
from dsseg.spec import ClipNaming
from dsseg.timing import StageTimer

# ViLD's prompt templates, as the released classifier lists them (VILD_PROMPT, from FC-CLIP).
VILD_TEMPLATES = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)
POOL_EPS = 1e-8  # the released MaskPooling's denominator offset
TEXT_CACHE = 64  # class lists whose text embeddings a CLIP keeps


def synonyms(name: str) -> list[str]:
    """A class name's synonyms, as the released ``split_labels`` reads them: ``", "`` → ``","``, then split at ``","``."""
    return name.replace(", ", ",").split(",")


def candidate_names(candidates: Sequence[str], background: bool) -> list[str]:
    """The classes a segment is named among: ``background`` first (when ``background`` and not
    already a candidate), then the candidates in their order."""
    names = list(candidates)
    return [BACKGROUND_NAME, *names] if background and BACKGROUND_NAME not in names else names


@torch.no_grad()
def text_classifier(clip: Clip, names: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
    """(T, D) float32 unit embeddings, one per synonym in class order, and the synonym count per
    class (step 1; kept on ``clip`` for the last ``TEXT_CACHE`` class lists)."""
    cache: OrderedDict = clip.__dict__.setdefault("_text_classifiers", OrderedDict())
    key = tuple(names)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    words = [synonyms(name) for name in names]
    texts = [template.format(word) for group in words for word in group for template in VILD_TEMPLATES]
    features = clip.encode_texts(texts)
    features = features / features.norm(dim=-1, keepdim=True)
    features = features.reshape(-1, len(VILD_TEMPLATES), features.shape[-1]).mean(dim=1)
    features = features / features.norm(dim=-1, keepdim=True)
    cache[key] = (features, [len(group) for group in words])
    if len(cache) > TEXT_CACHE:
        cache.popitem(last=False)
    return cache[key]


def clip_input(images: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Model inputs (B, 3, h, w) in [-1, 1] → (B, 3, h', w') float32 in [0, 1], not normalised
    (step 2); with ``size``, resized (bilinear, half-pixel centres, no antialiasing, as the released
    ``F.interpolate``) so that the longer side is ``size``."""
    pixels = (images.float() + 1.0) / 2.0
    if size is not None:
        height, width = pixels.shape[-2:]
        scale = size / max(height, width)
        target = (max(1, round(height * scale)), max(1, round(width * scale)))
        if target != (height, width):
            pixels = F.interpolate(pixels, size=target, mode="bilinear", align_corners=False)
    return pixels


def mask_pool(features: torch.Tensor, labels: torch.Tensor, segments: int) -> torch.Tensor:
    """One image's features (C, H', W') and labels (h, w) in 0..S−1 → (S, C): each segment's mask
    resized to the feature grid by nearest-exact, and the features averaged over it (step 3; a
    segment no grid position samples pools to zeros). The masks are 0/1, so resizing each one is
    sampling the labels at the grid positions: one resize of the label map, by the same kernel."""
    grid = tuple(features.shape[-2:])
    sampled = labels.to(features.device)
    if tuple(labels.shape) != grid:  # ids < 2²⁴ are exact in float32
        sampled = F.interpolate(sampled[None, None].float(), size=grid, mode="nearest-exact")[0, 0].long()
    sampled = sampled.reshape(-1)
    masks = F.one_hot(sampled, segments).to(features.dtype)  # (H'·W', S)
    counts = masks.sum(dim=0) + POOL_EPS
    return (masks / counts).T @ features.reshape(features.shape[0], -1).T


def class_logits(
    embeddings: torch.Tensor, classifier: torch.Tensor, counts: Sequence[int], temperature: float
) -> torch.Tensor:
    """Segment embeddings (S, D) and synonym embeddings (T, D) → (S, K) class logits: cosine ×
    ``temperature``, the max over each class's synonyms (step 4)."""
    logits = temperature * F.normalize(embeddings.float(), dim=-1) @ classifier.T
    return torch.stack([part.max(dim=-1).values for part in logits.split(list(counts), dim=-1)], dim=-1)


@torch.no_grad()
def name_image(
    result: MethodResult, image: torch.Tensor, names: Sequence[str], clip: Clip, naming: ClipNaming
) -> MethodResult:
    """One image's result named among ``names`` (background included where it applies) from its
    model input ``image`` (1, 3, h, w) in [-1, 1]: names and softmax probabilities per segment."""
    classifier, counts = text_classifier(clip, names)
    pixels = clip_input(image, naming.clip_image_size).to(clip.device, clip.dtype)
    features = clip.model.dense_features(pixels)[0]
    segments = int(result.labels.max()) + 1
    pooled = mask_pool(features.float(), result.labels, segments)
    embeddings = clip.model.embed_pooled(pooled.to(clip.dtype))
    probabilities = class_logits(embeddings, classifier, counts, clip.model.temperature).softmax(dim=-1)
    best, winner = probabilities.max(dim=-1)
    return replace(result, names=[names[int(w)] for w in winner], scores=[float(b) for b in best])


def name_with_clip(
    results: Sequence[MethodResult],
    images: torch.Tensor | None,
    candidates: Sequence[Sequence[str]],
    clip: Clip,
    naming: ClipNaming,
    timer: StageTimer | None = None,
) -> list[MethodResult]:
    """Per image, its result with every segment named by CLIP among its ``candidates`` (and
    background, see ``candidate_names``); ``images``: the model inputs (B, 3, h, w) in [-1, 1]."""
    if images is None:
        raise ValueError(
            "naming='clip' reads the image: segment images (segment_image / the job), not cached attention"
        )
    timer = timer or StageTimer()
    with timer.stage("segment"):
        return [
            name_image(result, images[i : i + 1], candidate_names(candidates[i], naming.clip_background), clip, naming)
            for i, result in enumerate(results)
        ]


__all__ = [
    "VILD_TEMPLATES",
    "candidate_names",
    "class_logits",
    "clip_input",
    "mask_pool",
    "name_image",
    "name_with_clip",
    "synonyms",
    "text_classifier",
]
