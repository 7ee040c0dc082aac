"""Benchmarks whose ground truth is one label PNG per image, mapped to classes by a lookup table."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow.json as pajson
import pyarrow.parquet as pq

from dsseg.evaluation.datasets.base import (
    Dataset,
    DatasetRootError,
    Sample,
    lookup_table,
    read_indices,
    read_list,
    require,
)
from dsseg.model.vocabularies import ADE150_NAMES, COCO80, CONTEXT59, VOC20

COCOSTUFF27_NAMES = (
    "electronic", "appliance", "food-things", "furniture-things", "indoor", "kitchen", "accessory", "animal",
    "outdoor", "person", "sports", "vehicle",  # things: 0–11
    "ceiling", "floor", "food-stuff", "furniture-stuff", "rawmaterial", "textile", "wall", "window", "building",
    "ground", "plant", "sky", "solid", "structural", "water",  # stuff: 12–26
)  # fmt: skip

CITYSCAPES27_NAMES = (
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge", "tunnel",
    "pole", "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle",
)  # fmt: skip

CAMVID_NAMES = (
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
)


class LabelPngDataset(Dataset):
    """Image and label-PNG pairs; ``table`` maps stored values to classes (255 = ignore)."""

    def __init__(self, name: str, class_names: tuple[str, ...], samples: list[Sample], table: np.ndarray) -> None:
        self.name, self.class_names, self.table = name, class_names, table
        missing = [path for s in samples for path in (s.image, s.label) if not Path(path).is_file()]
        if missing:
            raise DatasetRootError(
                f"{name}: {len(missing)} of the split's {2 * len(samples)} image and label files are missing, e.g. {missing[0]}"
            )
        super().__init__(samples)

    def load_label(self, sample: Sample) -> np.ndarray:
        raw = read_indices(sample.label)
        if raw.max() >= len(self.table):
            raise ValueError(f"{sample.label}: label value {raw.max()} outside the {self.name} encoding")
        return self.table[raw]


def _pairs(images: Path, labels: Path, ids: list[str], image_suffix: str, label_suffix: str) -> list[Sample]:
    return [Sample(i, str(images / f"{i}{image_suffix}"), str(labels / f"{i}{label_suffix}")) for i in ids]


def cocostuff27(root: str | Path, split: str = "val2017", curated: bool = True) -> LabelPngDataset:
    """COCO-Stuff-27: stuffthingmaps PNGs (182 fine ids, 0-based) → 27 coarse classes; with
    ``curated`` the 2,175-image val2017 list of the unsupervised-segmentation papers."""
    root = Path(root)
    layout = f"  images/{split}/<id>.jpg\n  stuffthingmaps_trainval2017/{split}/<id>.png"
    images = require(root / "images" / split, "images", "cocostuff27", layout)
    labels = require(root / "stuffthingmaps_trainval2017" / split, "stuff+thing label maps", "cocostuff27", layout)
    data = resources.files("dsseg.evaluation.datasets") / "data" / "cocostuff27"
    if curated:
        ids = read_list(Path(str(data / "curated_val2017_ids.txt")))
    else:
        ids = sorted(p.stem for p in labels.glob("*.png"))
    fine_to_coarse = json.loads((data / "fine_to_coarse.json").read_text())["fine_index_to_coarse_index"]
    table = lookup_table({int(fine): coarse for fine, coarse in fine_to_coarse.items()})
    return LabelPngDataset("cocostuff27", COCOSTUFF27_NAMES, _pairs(images, labels, ids, ".jpg", ".png"), table)


# COCO's 80 thing category ids (1..90 without the ten unused), in id order: class i + 1 of COCO-Object.
COCO_THING_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


def coco_object_curated(root: str | Path, split: str = "val2017", curated: bool = True) -> LabelPngDataset:
    """COCO-Object as DiffCut's released open-vocabulary evaluation reads it (``dataloader/iterator.py``
    with ``coco_object_mapping.pickle``): cocostuff27's layout and, with ``curated``, its 2,175 curated
    val2017 images; the stuffthingmaps' 80 things (stored as COCO id − 1) → classes 1..80 in COCO id
    order, and everything else, stuff and unlabelled (255) included, → background 0: no pixel ignored."""
    root = Path(root)
    layout = f"  images/{split}/<id>.jpg\n  stuffthingmaps_trainval2017/{split}/<id>.png"
    images = require(root / "images" / split, "images", "coco_object_curated", layout)
    labels = require(
        root / "stuffthingmaps_trainval2017" / split, "stuff+thing label maps", "coco_object_curated", layout
    )
    if curated:
        data = resources.files("dsseg.evaluation.datasets") / "data" / "cocostuff27"
        ids = read_list(Path(str(data / "curated_val2017_ids.txt")))
    else:
        ids = sorted(p.stem for p in labels.glob("*.png"))
    table = np.zeros(256, dtype=np.uint8)
    table[[cat - 1 for cat in COCO_THING_IDS]] = np.arange(1, len(COCO_THING_IDS) + 1)
    samples = _pairs(images, labels, ids, ".jpg", ".png")
    return LabelPngDataset("coco_object_curated", ("background", *COCO80), samples, table)


def cityscapes27(root: str | Path, split: str = "val") -> LabelPngDataset:
    """Cityscapes with the 27 classes of labelIds 7..33 (→ 0..26; all else ignored). The official
    layout, or a flat folder of frames with their ``_gtFine_labelIds.png`` beside them."""
    root = Path(root)
    table = lookup_table({7 + c: c for c in range(27)})
    layout = f"  leftImg8bit/{split}/<city>/<name>_leftImg8bit.png\n  gtFine/{split}/<city>/<name>_gtFine_labelIds.png"
    flat = sorted(root.glob("*_leftImg8bit.png")) if not (root / "leftImg8bit").exists() else []
    if flat:
        samples = [
            Sample(
                p.name.removesuffix("_leftImg8bit.png"),
                str(p),
                str(p.with_name(p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png"))),
            )
            for p in flat
        ]
        return LabelPngDataset("cityscapes27", CITYSCAPES27_NAMES, samples, table)
    images = require(root / "leftImg8bit" / split, "images", "cityscapes27", layout)
    labels = require(root / "gtFine" / split, "gtFine label maps", "cityscapes27", layout)
    samples = []
    for image in sorted(images.glob("*/*_leftImg8bit.png")):
        stem = image.name.removesuffix("_leftImg8bit.png")
        label = labels / image.parent.name / f"{stem}_gtFine_labelIds.png"
        samples.append(Sample(f"{image.parent.name}/{stem}", str(image), str(label)))
    return LabelPngDataset("cityscapes27", CITYSCAPES27_NAMES, samples, table)


def ade20k150(root: str | Path, split: str = "validation") -> LabelPngDataset:
    """ADE20K SceneParsing (ADEChallengeData2016): 150 classes stored 1..150, 0 = other (ignored)."""
    root = Path(root)
    layout = f"  images/{split}/<id>.jpg\n  annotations/{split}/<id>.png"
    images = require(root / "images" / split, "images", "ade20k150", layout)
    labels = require(root / "annotations" / split, "annotations", "ade20k150", layout)
    ids = sorted(p.stem for p in labels.glob("*.png"))
    return LabelPngDataset(
        "ade20k150",
        ADE150_NAMES,
        _pairs(images, labels, ids, ".jpg", ".png"),
        lookup_table({c + 1: c for c in range(150)}),
    )


def voc2012(root: str | Path, split: str = "val") -> LabelPngDataset:
    """PASCAL VOC 2012 segmentation: 21 classes (0 = background), 255 = object borders (ignored)."""
    root = Path(root)
    layout = f"  JPEGImages/<id>.jpg\n  SegmentationClass/<id>.png\n  ImageSets/Segmentation/{split}.txt"
    ids = read_list(require(root / "ImageSets" / "Segmentation" / f"{split}.txt", "split list", "voc2012", layout))
    labels = require(root / "SegmentationClass", "SegmentationClass", "voc2012", layout)
    samples = _pairs(root / "JPEGImages", labels, ids, ".jpg", ".png")
    return LabelPngDataset("voc2012", ("background", *VOC20), samples, lookup_table({c: c for c in range(21)}))


def pascal_context(root: str | Path, split: str = "val", classes: int = 59) -> LabelPngDataset:
    """PASCAL Context in the converted PNG layout (0 = background, 1..59 the classes): 59 classes
    (background ignored) or 60 (background is class 0)."""
    if classes not in (59, 60):
        raise ValueError(f"pascal_context has 59 or 60 classes; got {classes}")
    root = Path(root)
    layout = f"  JPEGImages/<id>.jpg\n  SegmentationClassContext/<id>.png\n  ImageSets/SegmentationContext/{split}.txt"
    ids = read_list(
        require(root / "ImageSets" / "SegmentationContext" / f"{split}.txt", "split list", "pascal_context", layout)
    )
    labels = require(root / "SegmentationClassContext", "label maps", "pascal_context", layout)
    samples = _pairs(root / "JPEGImages", labels, ids, ".jpg", ".png")
    if classes == 60:
        return LabelPngDataset(
            "context60", ("background", *CONTEXT59), samples, lookup_table({c: c for c in range(60)})
        )
    return LabelPngDataset("context59", CONTEXT59, samples, lookup_table({c + 1: c for c in range(59)}))


def camvid(root: str | Path, split: str | None = None) -> LabelPngDataset:
    """CamVid (SegNet version): 11 classes, 11 = unlabelled (ignored); ``images/`` and
    ``labels/`` with the same file names (optionally one level of split folders)."""
    root = Path(root)
    layout = "  images/[<split>/]<name>.png\n  labels/[<split>/]<name>.png"
    images = require(root / "images" / (split or ""), "images", "camvid", layout)
    labels = require(root / "labels" / (split or ""), "labels", "camvid", layout)
    samples = [Sample(p.stem, str(p), str(labels / p.name)) for p in sorted(images.glob("*.png"))]
    return LabelPngDataset("camvid", CAMVID_NAMES, samples, lookup_table({c: c for c in range(11)}))


def manifest_dataset(path: str | Path, class_names: tuple[str, ...]) -> LabelPngDataset:
    """Any benchmark as a manifest (``.parquet`` or ``.jsonl``) with ``image_id``, ``uri`` and
    ``label`` (a PNG whose values are classes 0..K−1, 255 = ignore); relative paths resolve
    against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise DatasetRootError(f"manifest {path} not found")
    table = pq.read_table(path) if path.suffix == ".parquet" else pajson.read_json(path)
    missing = {"image_id", "uri", "label"} - set(table.column_names)
    if missing:
        raise DatasetRootError(f"manifest {path} lacks column(s) {sorted(missing)}; it needs image_id, uri and label")
    if not class_names:
        raise ValueError("a manifest dataset needs its class names (class_names=...; --classes on the command line)")
    rows = table.select(["image_id", "uri", "label"]).to_pylist()
    samples = [Sample(str(r["image_id"]), str(path.parent / r["uri"]), str(path.parent / r["label"])) for r in rows]
    return LabelPngDataset(
        "manifest", tuple(class_names), samples, lookup_table({c: c for c in range(len(class_names))})
    )
