"""Class-name lists of the zero-shot open-vocabulary benchmarks, in each dataset's label order.

Names are written as words a text encoder reads ("potted plant", not "pottedplant"); index i
of a list is dataset class i + 1 (0 is background in VOC, Context-60 and COCO-Object).
"""

from __future__ import annotations

BACKGROUND_NAME = "background"  # the class of pixels no candidate class takes (open vocabulary)
IGNORE_NAME = "ignore"  # the segment of uncertain pixels (open vocabulary's ignore band)
IGNORE_LABEL = 255  # the label value of pixels to ignore, in ground truth and pseudo-label maps

VOC20 = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train",
    "tv monitor",
)  # fmt: skip

CONTEXT59 = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "potted plant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tv monitor", "wall", "water", "window", "wood",
)  # fmt: skip

COCO80 = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

# ADE20K SceneParsing's 150 classes (first name of each), in label order: its dataset reader's
# class names and part of the caption-noun vocabulary (``dsseg.model.nouns``).
ADE150_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip

VOCABULARIES: dict[str, tuple[str, ...]] = {"voc20": VOC20, "context59": CONTEXT59, "coco80": COCO80}

# DiffSegmenter's own spellings of the benchmark classes (VCG-team/DiffSegmenter, the ``embs`` lists of
# ``open_vocabulary/{voc12,voc10,coco}/ptp_stable_*.py``, in each dataset's class order): the words its
# prompts name the classes with, and the names its released per-image candidate files use. Only the
# names that differ from ours are listed; every other class is spelled as in the vocabulary.
DIFFSEGMENTER_SPELLINGS: dict[str, dict[str, str]] = {
    "voc20": {
        "aeroplane": "plane", "bus": "buses", "dining table": "table", "person": "people",
        "potted plant": "plant", "tv monitor": "monitor",
    },
    "context59": {"aeroplane": "airplane", "potted plant": "plant", "tv monitor": "monitor"},
    "coco80": {
        "motorcycle": "motorbike", "airplane": "aeroplane", "couch": "sofa", "potted plant": "pottedplant",
        "dining table": "diningtable", "tv": "tvmonitor", "toothbrush": "toothbrus",
    },
}  # fmt: skip
SPELLING_TABLES: dict[str, dict[str, str]] = {
    f"diffsegmenter-{vocabulary}": table for vocabulary, table in DIFFSEGMENTER_SPELLINGS.items()
}


def get_spellings(name: str) -> dict[str, str]:
    """The shipped spelling table ``name`` (class name → the word(s) a prompt uses for it):
    diffsegmenter-voc20, diffsegmenter-context59, diffsegmenter-coco80."""
    try:
        return SPELLING_TABLES[name]
    except KeyError:
        raise ValueError(f"unknown spelling table {name!r}; available: {sorted(SPELLING_TABLES)}") from None


def get_vocabulary(name: str) -> tuple[str, ...]:
    """The class names of vocabulary ``name`` (voc20, context59, coco80)."""
    try:
        return VOCABULARIES[name]
    except KeyError:
        raise ValueError(f"unknown vocabulary {name!r}; available: {sorted(VOCABULARIES)}") from None
