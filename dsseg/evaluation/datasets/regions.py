"""Benchmarks whose ground truth is not one PNG of classes: BSDS500 (several human region maps
per image), Weizmann horses (JPEG figure-ground masks), COCO-Object (instance annotations) and
the full ADE20K release (``_seg.png`` colour-coded classes, names in a JSON per image)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import loadmat

from dsseg.evaluation.datasets.base import IGNORE, Dataset, RegionAnnotations, Sample, require
from dsseg.evaluation.datasets.png import ADE150_NAMES
from dsseg.model.vocabularies import COCO80


class BSDS500(Dataset):
    """BSDS500: ``images/[<split>/]<id>.jpg`` and ``groundTruth/[<split>/]<id>.mat``; several
    human segmentations per image (region maps, no classes): ``ground_truth`` gives
    ``RegionAnnotations``; ``load_label`` (for overlays) the first annotator's map."""

    name = "bsds500"

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        root = Path(root)
        layout = "  images/[<split>/]<id>.jpg\n  groundTruth/[<split>/]<id>.mat"
        images = require(root / "images" / (split or ""), "images", self.name, layout)
        truth = require(root / "groundTruth" / (split or ""), "groundTruth", self.name, layout)
        super().__init__([Sample(p.stem, str(p), str(truth / f"{p.stem}.mat")) for p in sorted(images.glob("*.jpg"))])

    def load_annotations(self, sample: Sample) -> list[np.ndarray]:
        """Every annotator's (H, W) int32 region map (ids as stored, from 1)."""
        cells = loadmat(sample.label)["groundTruth"][0]
        return [cell["Segmentation"][0, 0].astype(np.int32) for cell in cells]

    def load_label(self, sample: Sample) -> np.ndarray:
        """The first annotator's regions (for overlays)."""
        return self.load_annotations(sample)[0]

    def ground_truth(self, sample: Sample) -> RegionAnnotations:
        return RegionAnnotations(self.load_annotations(sample))


class WeizmannHorses(Dataset):
    """Weizmann horses: ``rgb/<name>.jpg`` and ``figure_ground/<name>.jpg`` (JPEG masks thresholded
    at 127; the image has another resolution, predictions are compared at the mask's size)."""

    name = "horse"
    class_names = ("background", "horse")

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        layout = "  rgb/<name>.jpg\n  figure_ground/<name>.jpg"
        images = require(root / "rgb", "images", self.name, layout)
        masks = require(root / "figure_ground", "figure_ground masks", self.name, layout)
        super().__init__([Sample(p.stem, str(p), str(masks / p.name)) for p in sorted(images.glob("*.jpg"))])

    def load_label(self, sample: Sample) -> np.ndarray:
        with Image.open(sample.label) as mask:
            return (np.asarray(mask.convert("L")) > 127).astype(np.uint8)


# Subsets of a COCO split: name → (the split whose files and annotations it reads, its image-id list).
COCO_SUBSETS = {"val2014_5k": ("val2014", "val2014_5k_ids.txt")}


class COCOObject(Dataset):
    """COCO-Object: 80 things + background (class 0) drawn from instance annotations, larger
    instances first so smaller ones stay visible; crowd regions are ignored. ``<split>/<file>``
    and ``annotations/instances_<split>.json``. ``val2014_5k``: the 5,000 val2014 images
    DiffSegmenter evaluates (the images of its released candidate lists, ``val_5k`` in its loader),
    read from ``val2014/`` and ``instances_val2014.json``."""

    name = "coco_object"
    class_names = ("background", *COCO80)

    def __init__(self, root: str | Path, split: str = "val2017") -> None:
        from pycocotools.coco import COCO

        root = Path(root)
        subset = None
        if split in COCO_SUBSETS:
            split, listing = COCO_SUBSETS[split]
            data = resources.files("dsseg.evaluation.datasets") / "data" / "coco_object" / listing
            subset = {int(line) for line in data.read_text().split()}
        layout = f"  {split}/<file_name>.jpg\n  annotations/instances_{split}.json"
        annotations = require(
            root / "annotations" / f"instances_{split}.json", "instance annotations", self.name, layout
        )
        self.coco = COCO(str(annotations))
        categories = sorted(self.coco.getCatIds())
        if len(categories) != len(COCO80):
            raise ValueError(f"{annotations} has {len(categories)} categories; COCO-Object needs the 80 of COCO")
        self.class_of = {cat: index + 1 for index, cat in enumerate(categories)}
        ids = sorted(self.coco.getImgIds())
        if subset is not None:
            missing = len(subset - set(ids))
            if missing:
                raise ValueError(f"{annotations} lacks {missing} of the subset's {len(subset)} images")
            ids = [i for i in ids if i in subset]
        images = self.coco.loadImgs(ids)
        super().__init__([Sample(str(image["id"]), str(root / split / image["file_name"])) for image in images])

    def load_label(self, sample: Sample) -> np.ndarray:
        image = self.coco.loadImgs(int(sample.image_id))[0]
        label = np.zeros((image["height"], image["width"]), dtype=np.uint8)
        instances = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image["id"]))
        for annotation in sorted(instances, key=lambda a: -a["area"]):
            mask = self.coco.annToMask(annotation).astype(bool)
            label[mask] = IGNORE if annotation.get("iscrowd") else self.class_of[annotation["category_id"]]
        return label


def decode_ade20k_seg(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A full-ADE20K ``_seg.png`` (H, W, 3) → (class index R/10·256 + G, instance mask B), int32."""
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] // 10 * 256 + rgb[..., 1], rgb[..., 2]


class ADE20KFull(Dataset):
    """The full ADE20K release (``<name>.jpg``, ``<name>_seg.png``, ``<name>.json`` side by side):
    each object's class is mapped to ``class_names`` (default the 150 SceneParsing names) by its
    first synonym found there; other classes and unlabelled pixels are ignored."""

    name = "ade20k_full"

    def __init__(self, root: str | Path, class_names: tuple[str, ...] = ADE150_NAMES) -> None:
        root = Path(root)
        require(root, "folder", self.name, "  <name>.jpg\n  <name>_seg.png\n  <name>.json")
        self.class_names = tuple(class_names)
        seg = sorted(root.rglob("*_seg.png"))
        super().__init__(
            [
                Sample(p.name.removesuffix("_seg.png"), str(p.with_name(p.name.replace("_seg.png", ".jpg"))), str(p))
                for p in seg
            ]
        )

    def object_classes(self, sample: Sample) -> dict[int, int]:
        """Full ADE20K class index → our class, for the objects of one image."""
        meta = json.loads(Path(sample.label.replace("_seg.png", ".json")).read_text())["annotation"]
        index = {name: i for i, name in enumerate(self.class_names)}
        mapping = {}
        for obj in meta["object"]:
            if obj["parts"]["part_level"] != 0:
                continue
            synonyms = [s.strip() for s in obj["name"].split(",")]
            found = next((index[s] for s in synonyms if s in index), None)
            if found is not None:
                mapping[int(obj["name_ndx"])] = found
        return mapping

    def load_label(self, sample: Sample) -> np.ndarray:
        with Image.open(sample.label) as image:
            classes, _ = decode_ade20k_seg(np.asarray(image.convert("RGB")))
        lookup = np.full(int(classes.max()) + 1, IGNORE, dtype=np.uint8)
        for full, ours in self.object_classes(sample).items():
            if full < len(lookup):
                lookup[full] = ours
        return lookup[classes]
