"""DiffCut's released CLIP naming written the straightforward way, in float64, for the tests of
``dsseg.methods.clip_naming``: a transcription of ``eval_diffcut_openvoc.py`` (``associate_label``,
the image handed to CLIP) and ``tools/clip_classifier.py`` (``VILD_PROMPT``,
``prepare_class_names_from_metadata``, ``get_text_classifier``, ``get_classification_logits``)
and ``tools/utils.py`` (``MaskPooling``), loop per segment id and all, with the CLIP towers passed in
as functions (``encode``, ``dense``, ``head``) so that any model, in any precision, can stand behind them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

VILD_PROMPT = [
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
]


def split_labels(names: Sequence[str]) -> list[list[str]]:
    """``prepare_class_names_from_metadata``'s ``split_labels``: synonyms of each class name."""
    return [name.replace(", ", ",").split(",") for name in names]


def reference_text_classifier(
    encode: Callable[[list[str]], torch.Tensor], names: Sequence[str]
) -> tuple[torch.Tensor, list[int]]:
    """(text classifier (T, D) float64, num_templates per class), as ``get_text_classifier``:
    every synonym in every template, encoded (128 texts per call), normalised, averaged over the
    templates, normalised again."""
    templated, num_templates = [], []
    for synonyms in split_labels(names):
        texts = [template.format(word) for word in synonyms for template in VILD_PROMPT]
        templated += texts
        num_templates.append(len(texts) // len(VILD_PROMPT))
    parts = [encode(templated[i : i + 128]).double() for i in range(0, len(templated), 128)]
    classifier = torch.cat(parts)
    classifier = classifier / classifier.norm(dim=-1, keepdim=True)
    classifier = classifier.reshape(classifier.shape[0] // len(VILD_PROMPT), len(VILD_PROMPT), -1).mean(1)
    return classifier / classifier.norm(dim=-1, keepdim=True), num_templates


def reference_mask_pooling(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``MaskPooling.forward``: x (B, C, H, W), mask (B, Q, h, w) → (B, Q, C)."""
    if not x.shape[-2:] == mask.shape[-2:]:
        mask = F.interpolate(mask, size=x.shape[-2:], mode="nearest-exact")
    mask = (mask > 0).to(mask.dtype)
    denorm = mask.sum(dim=(-1, -2), keepdim=True) + 1e-8
    return torch.einsum("bchw,bqhw->bqc", x, mask / denorm)


def reference_logits(
    x: torch.Tensor, text_classifier: torch.Tensor, logit_scale: torch.Tensor, num_templates: Sequence[int]
) -> torch.Tensor:
    """``get_classification_logits``: (B, *, C) → (B, *, K + 1), the last column the "void" one."""
    x = F.normalize(x, dim=-1)
    logit_scale = torch.clamp(logit_scale.exp(), max=100)
    pred_logits = logit_scale * x @ text_classifier.T
    final_pred_logits = []
    cur_idx = 0
    for num_t in num_templates:
        final_pred_logits.append(pred_logits[:, :, cur_idx : cur_idx + num_t].max(-1).values)
        cur_idx += num_t
    final_pred_logits.append(pred_logits[:, :, -1])
    return torch.stack(final_pred_logits, dim=-1)


def reference_clip_image(image01: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """The image ``associate_label`` hands CLIP: the dataloader's [0, 1] pixels as they are (no
    mean/std normalisation), resized bilinearly to size² first when given (COCO-Object: 2048)."""
    if size is not None:
        image01 = F.interpolate(image01, size=(size, size), mode="bilinear")
    return image01


def reference_associate_label(
    image01: torch.Tensor,
    mask: torch.Tensor,
    dense: Callable[[torch.Tensor], torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
    text_classifier: torch.Tensor,
    logit_scale: torch.Tensor,
    num_templates: Sequence[int],
    size: int | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """``associate_label`` for one image (1, 3, H, W) in [0, 1] and its segment ids ``mask``
    (1, 1, h, w) → (the per-pixel class map, {segment id: its class probabilities (K,)})."""
    final_mask = torch.zeros_like(mask)
    features = dense(reference_clip_image(image01, size))
    probabilities = {}
    for i in torch.unique(mask):
        cls_idx = (1.0 * (mask == i.item())).to(features.dtype)  # float32 as released; here the features' float64
        mask_embed = reference_mask_pooling(features, cls_idx)[0]
        pooled = head(mask_embed.reshape(1, 1, -1))
        out = reference_logits(pooled, text_classifier, logit_scale, num_templates)
        soft = out[..., :-1].softmax(-1)
        idx = torch.argmax(soft).item()
        final_mask[mask == i] = idx
        probabilities[int(i.item())] = soft.reshape(-1)
    return final_mask, probabilities
