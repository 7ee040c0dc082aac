"""Nouns that name visible things, read from a caption without a part-of-speech tagger.

The seeds tag captions with NLTK, whose tagger data cannot be fetched on every machine (it is a
separate download, not a wheel), and a tagger keeps every noun: "picture", "view", "front",
"side", which name nothing to segment. dsseg instead matches the caption's words against a
vocabulary of thing and stuff names (COCO-Stuff's, ADE20K's 150, the VOC and Context names,
and words captions use for people and animals): longest phrase first ("traffic light" before
"light"), each word tried as written and singularised ("horses" → "horse", "people" → "person").
What this misses: nouns outside the vocabulary, and a vocabulary word used as a modifier
("a horse trailer" names "horse"). ``concept`` maps synonyms to one name, so caption nouns can be
matched to a dataset's class list ("man" → "person", "aeroplane" → "airplane").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dsseg.model.vocabularies import ADE150_NAMES, COCO80, CONTEXT59, VOC20

# COCO-Stuff's 171 thing and stuff names, written as words ("wall-brick", "wall-wood" → "wall"): 165 distinct.
COCO_STUFF_NAMES = (
    "airplane", "apple", "backpack", "banana", "banner", "baseball bat", "baseball glove", "bear", "bed",
    "bench", "bicycle", "bird", "blanket", "blender", "boat", "book", "bottle", "bowl", "branch", "bridge",
    "broccoli", "building", "bus", "bush", "cabinet", "cage", "cake", "car", "cardboard", "carpet", "carrot",
    "cat", "ceiling", "cell phone", "chair", "clock", "cloth", "clothes", "clouds", "couch", "counter", "cow",
    "cup", "cupboard", "curtain", "desk", "dining table", "dirt", "dog", "donut", "door", "elephant",
    "eye glasses", "fence", "fire hydrant", "floor", "flower", "fog", "food", "fork", "frisbee", "fruit",
    "furniture", "giraffe", "grass", "gravel", "ground", "hair brush", "hair drier", "handbag", "hat", "hill",
    "horse", "hot dog", "house", "keyboard", "kite", "knife", "laptop", "leaves", "light", "mat", "metal",
    "microwave", "mirror", "moss", "motorcycle", "mountain", "mouse", "mud", "napkin", "net", "orange", "oven",
    "paper", "parking meter", "pavement", "person", "pillow", "pizza", "plant", "plastic", "plate", "platform",
    "playingfield", "potted plant", "railing", "railroad", "refrigerator", "remote", "river", "road", "rock",
    "roof", "rug", "salad", "sand", "sandwich", "scissors", "sea", "sheep", "shelf", "shoe", "sink",
    "skateboard", "skis", "sky", "skyscraper", "snow", "snowboard", "spoon", "sports ball", "stairs", "stone",
    "stop sign", "straw", "street sign", "suitcase", "surfboard", "table", "teddy bear", "tennis racket",
    "tent", "textile", "tie", "toaster", "toilet", "toothbrush", "towel", "traffic light", "train", "tree",
    "truck", "tv", "umbrella", "vase", "vegetable", "wall", "water", "waterdrops", "window", "window blind",
    "wine glass", "wood", "zebra",
)  # fmt: skip


# Words captions use for what they show, beyond the dataset lists.
CAPTION_NAMES = (
    "man", "woman", "boy", "girl", "child", "kid", "baby", "player", "guy", "lady", "crowd", "puppy",
    "kitten", "pony", "foal", "lamb", "calf", "bull", "cattle", "duck", "goose",
    "chicken", "swan", "parrot", "owl", "eagle", "fish", "deer", "monkey", "lion", "tiger", "rabbit",
    "squirrel", "butterfly", "plane", "jet", "helicopter", "bike", "motorbike", "scooter", "taxi", "van",
    "boat", "ship", "yacht", "canoe", "kayak", "beach", "ocean", "lake", "pond", "forest", "field", "park",
    "street", "sidewalk", "lawn", "garden", "desert", "cliff", "wave", "waves", "cloud", "sun", "moon",
    "television", "phone", "computer", "lamp", "sofa", "couch", "bag", "hat", "shirt", "jacket", "dress",
    "glasses", "umbrella", "flowers", "leaf", "bowl", "mug", "glass", "bread", "meat", "cheese", "egg",
    "tomato", "potato", "window", "brick", "fountain", "statue", "tower", "church", "castle", "barn",
)  # fmt: skip

# Synonyms: a word → the name it stands for when captions are matched to class lists.
SYNONYMS = {
    **dict.fromkeys(
        ("man", "woman", "boy", "girl", "child", "kid", "baby", "people", "player", "guy", "lady", "crowd"), "person"
    ),
    **dict.fromkeys(("aeroplane", "plane", "jet", "airliner"), "airplane"),
    **dict.fromkeys(("motorbike", "scooter", "minibike"), "motorcycle"),
    **dict.fromkeys(("bike",), "bicycle"),
    **dict.fromkeys(("tv monitor", "television", "television receiver", "monitor", "crt screen"), "tv"),
    **dict.fromkeys(("sofa",), "couch"),
    **dict.fromkeys(("puppy",), "dog"),
    **dict.fromkeys(("kitten",), "cat"),
    **dict.fromkeys(("pony", "foal"), "horse"),
    **dict.fromkeys(("lamb",), "sheep"),
    **dict.fromkeys(("calf", "bull", "cattle"), "cow"),
    **dict.fromkeys(("ship", "yacht", "canoe", "kayak"), "boat"),
    **dict.fromkeys(("taxi",), "car"),
    **dict.fromkeys(("phone",), "cell phone"),
    **dict.fromkeys(("ocean",), "sea"),
    **dict.fromkeys(("lawn",), "grass"),
    **dict.fromkeys(("street",), "road"),
    **dict.fromkeys(("windowpane",), "window"),
    **dict.fromkeys(("duck", "goose", "chicken", "swan", "parrot", "owl", "eagle"), "bird"),
    **dict.fromkeys(("potted plant",), "plant"),
    **dict.fromkeys(("table",), "dining table"),
    **dict.fromkeys(("shelves",), "shelf"),
}

IRREGULAR_PLURALS = {
    "men": "man", "women": "woman", "people": "person", "children": "child", "mice": "mouse", "feet": "foot",
    "teeth": "tooth", "geese": "goose", "knives": "knife", "leaves": "leaf", "shelves": "shelf",
    "wolves": "wolf", "calves": "calf", "loaves": "loaf", "skis": "ski", "glasses": "glass",
}  # fmt: skip

NOUNS = frozenset(COCO_STUFF_NAMES) | frozenset(ADE150_NAMES) | frozenset(VOC20 + CONTEXT59 + COCO80 + CAPTION_NAMES)
LONGEST_NAME = max(len(name.split()) for name in NOUNS)
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class CaptionNoun:
    """A noun found in a caption: ``name`` as the vocabulary writes it ("horse"), ``phrase`` as
    the caption does ("horses")."""

    name: str
    phrase: str


def singular_forms(word: str) -> list[str]:
    """``word`` and the singulars it may be the plural of, most likely first ("buses" → bus, buse)."""
    forms = [word]
    if word in IRREGULAR_PLURALS:
        forms.append(IRREGULAR_PLURALS[word])
    if word.endswith("ies") and len(word) > 4:
        forms.append(word[:-3] + "y")
    if word.endswith("ves"):
        forms += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith(("ses", "xes", "zes", "ches", "shes")):
        forms.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss"):
        forms.append(word[:-1])
    return forms


def caption_nouns(caption: str, vocabulary: Iterable[str] = NOUNS) -> list[CaptionNoun]:
    """The vocabulary nouns of ``caption``, in order of first appearance, each name once.

    At each word the longest vocabulary phrase starting there wins; a phrase matches when its words
    equal the caption's, the last one possibly singularised. Case and punctuation are ignored.
    """
    names = vocabulary if isinstance(vocabulary, (set, frozenset)) else frozenset(vocabulary)
    words = _WORD.findall(caption.lower())
    found: dict[str, CaptionNoun] = {}
    start = 0
    while start < len(words):
        match = _longest_match(words, start, names)
        if match is None:
            start += 1
            continue
        name, length = match
        found.setdefault(name, CaptionNoun(name, " ".join(words[start : start + length])))
        start += length
    return list(found.values())


def _longest_match(words: Sequence[str], start: int, names: frozenset[str]) -> tuple[str, int] | None:
    for length in range(min(LONGEST_NAME, len(words) - start), 0, -1):
        head = words[start : start + length - 1]
        for last in singular_forms(words[start + length - 1]):
            name = " ".join([*head, last])
            if name in names:
                return name, length
    return None


def concept(name: str) -> str:
    """The name ``name`` stands for when lists are compared: lower case, synonyms merged."""
    key = " ".join(_WORD.findall(name.lower()))
    return SYNONYMS.get(key, key)


def classes_named(nouns: Iterable[str], candidates: Sequence[str]) -> list[str]:
    """The candidates (in their order) that one of ``nouns`` names, synonyms included."""
    named = {concept(noun) for noun in nouns}
    return [name for name in candidates if concept(name) in named]
