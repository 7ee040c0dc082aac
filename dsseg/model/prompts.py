"""Prompts that name classes, and where each class name sits in the CLIP token sequence.

Two ways to prompt:
- one prompt per class from a template, ``"a photograph of {class}"`` (DiffSegmenter), with
  optional descriptive words before the name (``"a photograph of brown horse"``);
- one joint prompt naming every class (``"a photograph of horse, grass"``) or a caption that
  contains them, for naming the segments of the unsupervised methods.

Captions (``ImageTexts``, from ``dsseg.model.captioner``) enter both: an image's caption is its
joint prompt, its nouns the classes (DiffSeg's demo); a class prompt continued by a conditional
caption ("a photograph of a horse" + "standing in a field") is DiffSegmenter's augmented prompt.

A ``PromptPlan`` holds the text, the token positions whose text embeddings are re-weighted
(the class names: "[class]++") and, per class, the positions whose cross-attention maps make
its map. By default (``class_tokens="mean"``) the name's tokens averaged (multi-token names such
as "traffic light"), fused half and half with the mean of its descriptive words' tokens when it
has any; DiffSegmenter's released code reads one token instead — the name's first (VOC) or last
(COCO, Context) — averaged with a token after it when the next word is a participle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from dsseg.model.config import CLASS_PLACEHOLDER, JOINT_PREFIX, JOINT_SEPARATOR, ClassTokenMode, check_template
from dsseg.model.tokenizer import CONTEXT_LENGTH


@dataclass(frozen=True)
class ClassTokens:
    """Token positions (in the 77-token sequence, 0 = start token) of one class in a prompt:
    ``name`` (all of the name's tokens), ``descriptors``; ``weighted``: those whose text states
    get the class weight (None: the name's); ``read``: those whose cross-attention maps are
    averaged, equally, into the class map (None: the name's, ½ and ½ with the descriptors')."""

    name: tuple[int, ...]
    descriptors: tuple[int, ...] = ()
    weighted: tuple[int, ...] | None = None
    read: tuple[int, ...] | None = None


@dataclass(frozen=True)
class PromptPlan:
    """A prompt, the positions to re-weight, and each class's token positions."""

    text: str
    classes: tuple[ClassTokens, ...]

    @property
    def weighted_positions(self) -> tuple[int, ...]:
        """Positions of the class names' tokens (their embeddings get the class weight)."""
        return tuple(
            sorted(
                {p for tokens in self.classes for p in (tokens.name if tokens.weighted is None else tokens.weighted)}
            )
        )

    def readout(self, length: int = CONTEXT_LENGTH) -> torch.Tensor:
        """(length, K) float32: column k turns cross-attention over tokens (…, length) into class k's
        map — the mean over its ``read`` tokens; without them the mean over its name tokens, or
        ½·that + ½·the mean over its descriptor tokens."""
        matrix = torch.zeros(length, len(self.classes))
        for k, tokens in enumerate(self.classes):
            if tokens.read is not None:
                matrix[list(tokens.read), k] += 1.0 / len(tokens.read)
                continue
            share = 0.5 if tokens.descriptors else 1.0
            matrix[list(tokens.name), k] += share / len(tokens.name)
            if tokens.descriptors:
                matrix[list(tokens.descriptors), k] += 0.5 / len(tokens.descriptors)
        return matrix


@dataclass(frozen=True)
class ImageTexts:
    """What a captioner wrote for one image: ``caption``, its joint prompt, in which class ``name``
    appears as ``phrases[name]`` ("horses"); ``continuations[name]``, the words a conditional caption
    adds after that class's prompt."""

    caption: str = ""
    phrases: Mapping[str, str] = field(default_factory=dict)
    continuations: Mapping[str, str] = field(default_factory=dict)


def token_ids(tokenizer, text: str) -> list[int]:
    """CLIP token ids of ``text`` without the start and end tokens."""
    return tokenizer(text, add_special_tokens=False).input_ids


def phrase_positions(tokenizer, text: str, phrase: str, after: int = 0) -> tuple[int, ...]:
    """Positions of the first occurrence of ``phrase``'s tokens in ``text``'s token sequence
    (start token at 0) beginning at or after ``after``; ``ValueError`` if absent or cut off at 77."""
    sequence = token_ids(tokenizer, text)
    wanted = token_ids(tokenizer, phrase)
    if not wanted:
        raise ValueError(f"class name {phrase!r} has no tokens")
    n = len(wanted)
    for start in range(max(0, after - 1), len(sequence) - n + 1):
        if sequence[start : start + n] == wanted:
            positions = tuple(range(start + 1, start + 1 + n))
            if positions[-1] >= CONTEXT_LENGTH - 1:
                raise ValueError(
                    f"{phrase!r} falls beyond CLIP's {CONTEXT_LENGTH}-token limit in {text!r}; use fewer or shorter names per prompt"
                )
            return positions
    raise ValueError(f"{phrase!r} does not appear as whole tokens in the prompt {text!r}; put spaces around the name")


def phrases_apart(tokenizer, text: str, phrases: Sequence[str]) -> list[tuple[int, ...]]:
    """Positions of each phrase in ``text``, no two sharing a token: longer phrases claim theirs
    first, so "dog" is not found inside "hot dog" in either order; ``ValueError`` when one is absent."""
    claimed: set[int] = set()
    found: dict[int, tuple[int, ...]] = {}
    for index in sorted(range(len(phrases)), key=lambda i: -len(token_ids(tokenizer, phrases[i]))):
        after = 0
        while True:
            positions = phrase_positions(tokenizer, text, phrases[index], after=after)
            if not claimed.intersection(positions):
                break
            after = positions[0] + 1
        claimed.update(positions)
        found[index] = positions
    return [found[i] for i in range(len(phrases))]


def class_prompt_plan(
    tokenizer,
    template: str,
    name: str,
    descriptors: Sequence[str] = (),
    continuation: str = "",
    class_tokens: ClassTokenMode = "mean",
    participle_offset: int = 1,
    weight_last_word: bool = False,
) -> PromptPlan:
    """One class's prompt from ``template``: ``{class}`` → the descriptors then ``name`` (the words
    the prompt names the class by); then the ``continuation`` (a conditional caption's words).

    Read-out (``class_tokens``, see ``dsseg.model.config.Prompting``): ``mean`` fuses descriptor
    tokens with the name's, and a continuation's first word when it ends in "ing" ("horse
    standing"); ``first``/``last`` read the name's first/last token, averaged with the token
    ``participle_offset`` on when the word after the name ends in "ing", as DiffSegmenter's code.
    ``weight_last_word``: only the tokens of the name's last word are re-weighted (Compel's
    "word++" on the last word, as released), else every token of the name."""
    check_template(template)
    named = template.replace(CLASS_PLACEHOLDER, " ".join([*descriptors, name]))
    text = f"{named} {continuation}" if continuation else named
    prefix = template.split(CLASS_PLACEHOLDER, 1)[0]
    start = len(token_ids(tokenizer, prefix)) + 1
    descriptor_positions: list[int] = []
    for word in descriptors:
        found = phrase_positions(tokenizer, text, word, after=start)
        descriptor_positions.extend(found)
        start = found[-1] + 1
    name_positions = phrase_positions(tokenizer, text, name, after=start)
    weighted = name_positions[-len(token_ids(tokenizer, name.split()[-1])) :] if weight_last_word else None
    if class_tokens == "mean":
        participle = continuation.split()[0] if continuation.split() else ""
        if participle.endswith("ing"):
            descriptor_positions.extend(phrase_positions(tokenizer, text, participle, after=name_positions[-1] + 1))
        return PromptPlan(text, (ClassTokens(name_positions, tuple(descriptor_positions), weighted),))
    following = text[len(named) :].split()  # the released code: prompt.split(" ")[index of the name + 1]
    position = name_positions[0] if class_tokens == "first" else name_positions[-1]
    read = (position,)
    if following and following[0].endswith("ing") and 0 < participle_offset < CONTEXT_LENGTH - position:
        read = (position, position + participle_offset)
    return PromptPlan(text, (ClassTokens(name_positions, tuple(descriptor_positions), weighted, read),))


def joint_prompt_plans(
    tokenizer,
    names: Sequence[str],
    caption: str = "",
    phrases: Sequence[str] | None = None,
    prefix: str = JOINT_PREFIX,
    separator: str = JOINT_SEPARATOR,
) -> list[PromptPlan]:
    """Prompts naming every class: ``caption`` if given (each name, or its ``phrases`` entry, is found in it,
    ``phrases_apart``), else ``prefix`` + the names joined by ``separator`` (``"a photograph of NAME1,
    NAME2, …"``) — as many such prompts as CLIP's 77 tokens need, each naming a run of consecutive
    classes (so any vocabulary fits; each extra prompt is a UNet call)."""
    if not names:
        return [PromptPlan(caption, ())]
    if caption:
        return [PromptPlan(caption, tuple(ClassTokens(p) for p in phrases_apart(tokenizer, caption, phrases or names)))]
    budget = CONTEXT_LENGTH - 2 - len(token_ids(tokenizer, prefix))  # start and end tokens
    groups: list[list[str]] = [[]]
    for name in names:
        candidate = [*groups[-1], name]
        if groups[-1] and len(token_ids(tokenizer, separator.join(candidate))) > budget:
            groups.append([name])
        else:
            groups[-1] = candidate
    return [_joint_plan(tokenizer, group, prefix, separator) for group in groups]


def _joint_plan(tokenizer, names: Sequence[str], prefix: str, separator: str) -> PromptPlan:
    text = prefix + separator.join(names)
    after = len(token_ids(tokenizer, prefix)) + 1  # names are searched after the prefix ("a")
    found = []
    for name in names:  # in order, so "dog" is not found inside an earlier "hot dog"
        positions = phrase_positions(tokenizer, text, name, after=after)
        found.append(ClassTokens(positions))
        after = positions[-1] + 1
    return PromptPlan(text, tuple(found))
