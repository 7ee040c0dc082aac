"""``voc`` and ``cvat``: PASCAL VOC's segmentation layout, and CVAT's "Segmentation mask 1.1" (the same
layout with a ``labelmap.txt`` of label colours).

```
voc/  JPEGImages/<stem>.jpg                  the images (unless --no-images; non-JPEGs re-encoded)
      SegmentationClass/<stem>.png           named outputs: palette PNG of class ids (0 background, 255 ignore)
      SegmentationObject/<stem>.png          palette PNG of instance ids: segment k → k + 1, 0 background
      ImageSets/Segmentation/train.txt       the stems, one a line
      class_names.txt                        named outputs: class id → name, one a line
cvat/ labelmap.txt                           # label:color_rgb:parts:actions — background first
      SegmentationClass/<name>.png           RGB, each pixel its label's colour
      SegmentationObject/<name>.png          RGB, each instance its own colour
      ImageSets/Segmentation/default.txt     the names, one a line
      JPEGImages/<name>.<ext>                the images (unless --no-images)
```

VOC stems are flat (``horses/horse001.jpg`` → ``horses__horse001``, as the pseudo-label export
names them); CVAT names keep the folders (``horses/horse001``), as CVAT names a task's images.
CVAT's labels are the class names (plus ``ignore``) of a named output, ``segment_<k>`` (colour
of VOC palette entry k + 1) of a class-agnostic one. Colours are VOC's palette.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dsseg.evaluation.exports import voc_palette
from dsseg.export.rows import ClassNames, ImageReader, Row
from dsseg.io.files import file_stem, tree_stem
from dsseg.io.masks import png_bytes
from dsseg.model.vocabularies import IGNORE_LABEL, IGNORE_NAME

PALETTE = voc_palette()
COLOURS = np.array(PALETTE, dtype=np.uint8).reshape(256, 3)


class TooManySegments(ValueError):
    """A row with more segments than 8-bit label PNGs hold."""


def jpeg(data: bytes, extension: str) -> bytes:
    """Image bytes as JPEG (JPEG bytes kept, others re-encoded at quality 95)."""
    if extension == ".jpg":
        return data
    stream = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(stream, format="JPEG", quality=95)
    return stream.getvalue()


def rgb_png(labels: np.ndarray) -> bytes:
    """(H, W) ids 0..255 → RGB PNG in VOC's palette colours."""
    stream = io.BytesIO()
    Image.fromarray(COLOURS[labels.astype(np.uint8)]).save(stream, format="PNG")
    return stream.getvalue()


class VocWriter:
    """Writes ``voc`` (``cvat=False``) or ``cvat`` (``cvat=True``)."""

    def __init__(
        self, folder: Path, classes: ClassNames | None, images: ImageReader | None, cvat: bool = False
    ) -> None:
        self.folder, self.classes, self.images, self.cvat = folder, classes, images, cvat
        listing = folder / "ImageSets" / "Segmentation" / ("default.txt" if cvat else "train.txt")
        listing.parent.mkdir(parents=True)
        self.listing = listing.open("w")
        self.names = 0
        self.max_segment = -1  # class-agnostic CVAT: the labels segment_0..segment_<max>

    def name(self, row: Row) -> str:
        return tree_stem(row.image_id) if self.cvat else file_stem(row.image_id)

    def target(self, folder: str, name: str, extension: str = ".png") -> Path:
        path = self.folder / folder / f"{name}{extension}"
        if path.exists():
            raise FileExistsError(f"two image ids give the file name {path.relative_to(self.folder)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, row: Row) -> None:
        name = self.name(row)
        if max(s["segment_id"] for s in row.segments) + 1 >= IGNORE_LABEL:
            raise TooManySegments(f"segment ids up to {IGNORE_LABEL - 2} fit 8-bit label PNGs")
        objects = row.object_ids
        classes = row.class_ids if self.classes is not None else objects
        files: dict[Path, bytes] = {}
        if self.cvat:
            files[self.target("SegmentationClass", name)] = rgb_png(classes)
            files[self.target("SegmentationObject", name)] = rgb_png(objects)
        else:
            if self.classes is not None:
                files[self.target("SegmentationClass", name)] = png_bytes(classes, PALETTE)
            files[self.target("SegmentationObject", name)] = png_bytes(objects, PALETTE)
        if self.images is not None:
            data, extension = self.images.read(row.row, row.size)
            if not self.cvat:
                data, extension = jpeg(data, extension), ".jpg"
            files[self.target("JPEGImages", name, extension)] = data
        for path, data in files.items():  # only once every file of the row could be made
            path.write_bytes(data)
        if self.classes is None:
            self.max_segment = max(self.max_segment, max(s["segment_id"] for s in row.segments))
        self.listing.write(f"{name}\n")
        self.names += 1

    def labels(self) -> list[tuple[str, int]]:
        """(label name, palette index) of every label, background first."""
        if self.classes is not None:
            return [*((name, i) for i, name in enumerate(self.classes.names)), (IGNORE_NAME, IGNORE_LABEL)]
        return [("background", 0), *((f"segment_{k}", k + 1) for k in range(self.max_segment + 1))]

    def finish(self) -> dict[str, Any]:
        self.listing.close()
        if self.cvat:
            lines = ["# label:color_rgb:parts:actions"]
            lines += [f"{name}:{','.join(str(int(c)) for c in COLOURS[index])}::" for name, index in self.labels()]
            (self.folder / "labelmap.txt").write_text("\n".join(lines) + "\n")
        elif self.classes is not None:
            (self.folder / "class_names.txt").write_text("".join(f"{name}\n" for name in self.classes.names))
        return {"images": self.names}
