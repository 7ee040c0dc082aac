"""Prompts from captions, for the recipe's caption step (``dsseg.segmenter``): a batch's captions made
once, on first use (``LazyCaptions``); the nouns of a caption located in its CLIP tokens
(``located_nouns``: ``naming="caption"``); class prompts continued by conditional captions
(``conditional_texts``: DiffSegmenter's augmented prompts, ``descriptors="caption"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dsseg.model.config import CLASS_PLACEHOLDER
from dsseg.model.nouns import CaptionNoun, caption_nouns
from dsseg.model.prompts import ImageTexts, phrases_apart
from dsseg.timing import StageTimer


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


__all__ = ["LazyCaptions", "conditional_texts", "located_nouns"]
