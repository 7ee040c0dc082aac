"""``coco``: COCO instances JSON with compressed-RLE masks (string counts), streamed to disk.

``annotations.json``: ``images`` (ids 1..N in output order, ``file_name`` the image id, i.e. its
path under the input folder or ``--images``), one annotation per segment — named segments under
their class (background and ignore left out), class-agnostic ones under one category ``fg`` —
with the segment's ``score`` where it has one, and ``categories``. The images and annotations
are appended to two files as rows arrive and joined at the end, so memory does not grow with
the output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from dsseg.evaluation.exports import AGNOSTIC_CATEGORY  # as the pseudo-label COCO file names proposals
from dsseg.export.folder import JsonArray
from dsseg.export.rows import ClassNames, Row
from dsseg.model.vocabularies import BACKGROUND_NAME, IGNORE_LABEL

AGNOSTIC_ID = 1


class CocoWriter:
    def __init__(self, folder: Path, classes: ClassNames | None) -> None:
        self.folder, self.classes = folder, classes
        self.parts = folder / ".images.json.part", folder / ".annotations.json.part"
        self.streams = [path.open("w") for path in self.parts]
        self.images, self.annotations = (JsonArray(stream) for stream in self.streams)

    def write(self, row: Row) -> None:
        height, width = row.size
        number = self.images.count + 1
        self.images.add(
            {"id": number, "file_name": row.image_id, "width": width, "height": height, "dsseg_image_id": row.image_id}
        )
        for segment in row.segments:
            if self.classes is not None:
                category = row.class_id(segment)
                if category in (0, IGNORE_LABEL):  # background, ignore, unnamed
                    continue
            else:
                category = AGNOSTIC_ID
            annotation = {
                "id": self.annotations.count + 1,
                "image_id": number,
                "category_id": category,
                "segmentation": {"size": [height, width], "counts": segment["rle"]["counts"]},
                "area": int(segment["area"]),
                "bbox": [float(v) for v in segment["bbox"]],
                "iscrowd": 0,
                "dsseg_segment_id": segment["segment_id"],
            }
            if segment.get("score") is not None:
                annotation["score"] = float(segment["score"])
            self.annotations.add(annotation)

    def categories(self) -> list[dict[str, Any]]:
        if self.classes is None:
            return [{"id": AGNOSTIC_ID, "name": AGNOSTIC_CATEGORY, "supercategory": "object"}]
        return [
            {"id": i, "name": name, "supercategory": "object"}
            for i, name in enumerate(self.classes.names)
            if name != BACKGROUND_NAME
        ]

    def finish(self) -> dict[str, Any]:
        for array, stream in zip((self.images, self.annotations), self.streams):
            array.close()
            stream.close()
        with (self.folder / "annotations.json").open("w") as out:
            out.write('{"info":{"description":"dsseg export"},"categories":')
            out.write(json.dumps(self.categories()))
            for key, part in zip(("images", "annotations"), self.parts):
                out.write(f',\n"{key}":')
                with part.open() as stream:
                    shutil.copyfileobj(stream, out, 1 << 20)
                part.unlink()
            out.write("}\n")
        return {"images": self.images.count, "annotations": self.annotations.count}
