"""Pseudo-label datasets from segment-job rows: PASCAL VOC label PNGs, COCO JSON with RLE masks,
image-level labels from VOC XML or COCO instances, class-agnostic mask filters, and the quality
of pseudo-labels against ground truth.

Weakly supervised rows (openvocab, restricted to each image's classes) become class-index maps:
background 0, class c its index in the class list, uncertain pixels ("ignore") 255.
Class-agnostic rows (diffseg / ncut) become object proposals of one category, "fg".
"""

from __future__ import annotations

import functools
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dsseg.io.files import write_file
from dsseg.io.masks import class_labels, decode_segments, png_bytes
from dsseg.model.vocabularies import BACKGROUND_NAME, IGNORE_LABEL, VOC20

VOC_CLASSES = (BACKGROUND_NAME, *VOC20)
# VOC's XML names for the classes whose readable names differ.
VOC_XML_NAMES = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}
AGNOSTIC_CATEGORY = "fg"


def voc_palette() -> list[int]:
    """PASCAL VOC's 256-colour palette (768 ints): class bits spread over the high bits of R, G, B."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [r, g, b]
    return palette


def labels_from_voc(root: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """``{image_id, uri, labels}`` per image of a VOC split, labels from ``Annotations/<id>.xml``
    (object names, readable form, sorted, no repeats)."""
    root = Path(root)
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"no split list {split}.txt under {root}/ImageSets/Main or ImageSets/Segmentation")
    rows = []
    for image_id in (line.strip().split()[0] for line in listing.read_text().splitlines() if line.strip()):
        tree = ET.parse(root / "Annotations" / f"{image_id}.xml")
        names = {VOC_XML_NAMES.get(n.text.strip(), n.text.strip()) for n in tree.getroot().iter("name") if n.text}
        names &= set(VOC20)  # part names (head, hand, foot) are not classes
        rows.append(
            {"image_id": image_id, "uri": str(root / "JPEGImages" / f"{image_id}.jpg"), "labels": sorted(names)}
        )
    return rows


def labels_from_coco(instances: str | Path, images: str | Path) -> list[dict[str, Any]]:
    """``{image_id, uri, labels}`` per image of a COCO instances file (category names present)."""
    from pycocotools.coco import COCO

    coco = COCO(str(instances))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    rows = []
    for image in coco.loadImgs(sorted(coco.getImgIds())):
        present = {names[a["category_id"]] for a in coco.loadAnns(coco.getAnnIds(imgIds=image["id"], iscrowd=False))}
        rows.append(
            {"image_id": str(image["id"]), "uri": str(Path(images) / image["file_name"]), "labels": sorted(present)}
        )
    return rows


def class_list(image_labels: Iterable[Sequence[str]]) -> tuple[str, ...]:
    """The classes of a label set, background first: VOC's order when every label is a VOC
    class, else the sorted union."""
    names = {name for labels in image_labels for name in labels}
    if names <= set(VOC20):
        return VOC_CLASSES
    return (BACKGROUND_NAME, *sorted(names - {BACKGROUND_NAME}))


def voc_label_map(row: dict[str, Any], classes: Sequence[str]) -> np.ndarray:
    """An openvocab row → (H, W) uint8 VOC label map: background 0, class c → its index in
    ``classes``, "ignore" and names outside ``classes`` → 255."""
    labels = decode_segments(row["segments"])
    return class_labels(labels, row["segments"], classes, other=IGNORE_LABEL).astype(np.uint8)


def agnostic_segments(
    row: dict[str, Any], min_area: float = 0.01, max_masks: int | None = 20, drop_border_background: bool = True
) -> list[dict[str, Any]]:
    """Object proposals from a class-agnostic row: segments covering at least ``min_area`` of the
    image, without the segment touching the border most (the background) if asked, the largest
    ``max_masks`` first."""
    segments = list(row["segments"])
    total = row["height"] * row["width"]
    if drop_border_background and len(segments) > 1:
        labels = decode_segments(segments, (row["height"], row["width"]))
        border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        background = int(np.bincount(border).argmax())
        segments = [s for s in segments if s["segment_id"] != background]
    kept = sorted((s for s in segments if s["area"] >= min_area * total), key=lambda s: -s["area"])
    return kept[:max_masks] if max_masks else kept


def write_voc_png(path: Path, labels: np.ndarray) -> Path:
    """(H, W) uint8 class map → palette PNG (``SegmentationClassAug`` style), atomically."""
    data = png_bytes(labels.astype(np.uint8), voc_palette())
    return write_file(path, lambda stream: stream.write(data))


def coco_document(
    rows: Sequence[dict[str, Any]], classes: Sequence[str], agnostic: dict[str, list[dict]] | None = None
) -> dict:
    """One COCO instances document for ``rows`` (sorted by image_id: ids 1..N in that order, so the
    result is the same however the rows were sharded). Weak rows give one annotation per present
    class (not background or ignore); ``agnostic[image_id]`` lists an image's proposals (category
    "fg"). Masks are compressed RLE with string counts."""
    categories = [
        {"id": i, "name": name, "supercategory": "object"} for i, name in enumerate(classes) if name != BACKGROUND_NAME
    ]
    fg_id = len(classes)
    if agnostic:
        categories.append({"id": fg_id, "name": AGNOSTIC_CATEGORY, "supercategory": "object"})
    category = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for image_id_number, row in enumerate(sorted(rows, key=lambda r: r["image_id"]), start=1):
        images.append(
            {
                "id": image_id_number,
                "file_name": row["file_name"],
                "width": row["width"],
                "height": row["height"],
                "dsseg_image_id": row["image_id"],
            }
        )
        if agnostic and row["image_id"] in agnostic:
            chosen = [(s, fg_id) for s in agnostic[row["image_id"]]]
        else:
            chosen = [
                (s, category[s["label"]])
                for s in row["segments"]
                if s["label"] in category and s["label"] != AGNOSTIC_CATEGORY
            ]
        for segment, category_id in chosen:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id_number,
                    "category_id": category_id,
                    "segmentation": {"size": list(segment["rle"]["size"]), "counts": segment["rle"]["counts"]},
                    "area": int(segment["area"]),
                    "bbox": [float(v) for v in segment["bbox"]],
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories}


def manifest_ids(path: str) -> pa.Array:
    """The ``image_id`` column of a Parquet manifest (cached while the file is unchanged: export
    tasks on one worker share it)."""
    stat = os.stat(path)
    return _read_manifest_ids(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _read_manifest_ids(path: str, mtime_ns: int, size: int) -> pa.Array:
    return pq.read_table(path, columns=["image_id"]).column("image_id").combine_chunks()
