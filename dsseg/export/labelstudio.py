"""``labelstudio``: Label Studio tasks with ``BrushLabels`` predictions, in Label Studio's own brush RLE.

```
tasks.json               [{"data": {"image": URL, "image_id": ID}, "predictions": [{"model_version", "score", "result": [...]}]}]
labeling_config.xml      <Image name="image"> with <BrushLabels name="label"> of every label the tasks use
```

One result per segment: ``type: brushlabels``, ``original_width``/``original_height`` the masks'
size, ``value: {format: "rle", rle: [bytes…], brushlabels: [label]}`` with label the segment's
class name or ``segment_<id>``. ``data.image`` is ``ROOT/<image_id>`` with ``--images ROOT`` (a
URL prefix Label Studio can open, e.g. ``/data/local-files/?d=images``), else the row's source.

Brush RLE is not COCO RLE: it is the bit-packed run-length code of Label Studio's brush tool
(thi.ng's rle-pack) over the mask as RGBA bytes, row-major, 255 in all four channels inside the
mask and 0 outside. A stream is a 32-bit value count, the word size minus one (5 bits: 7, bytes),
four run-length field widths minus one (4 bits each), then chunks: a repeat flag (1 bit), which
width (2 bits), the run length minus one (that many bits) and, for a repeat, the value (8 bits).
``brush_rle`` writes only repeat chunks, built for all runs at once in NumPy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from dsseg.export.folder import JsonArray
from dsseg.export.rows import ClassNames, ImageReader, Row
from dsseg.export.voc import COLOURS
from dsseg.io.masks import rle_to_mask

RUN_WIDTHS = np.array([3, 4, 8, 16])  # bits of a chunk's run length − 1, chosen by a 2-bit index
MAX_CHUNK = 1 << int(RUN_WIDTHS[-1])  # values one chunk repeats at most
WORD_BITS = 8
CHANNELS = 4  # RGBA
FROM_NAME, TO_NAME = "label", "image"


def brush_rle(mask: np.ndarray) -> list[int]:
    """(H, W) bool mask → Label Studio brush RLE bytes (a list of ints 0..255, as tasks hold them)."""
    flat = np.asarray(mask, dtype=bool).ravel()  # row-major, as the brush tool's canvas
    if flat.size == 0:
        raise ValueError("empty mask")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.concatenate((starts, [flat.size]))) * CHANNELS
    values = np.where(flat[starts], 255, 0)
    pieces = -(-lengths // MAX_CHUNK)  # a run longer than one chunk holds is cut into several
    chunk = np.full(int(pieces.sum()), MAX_CHUNK, dtype=np.int64)
    last = np.cumsum(pieces) - 1
    chunk[last] = lengths - (pieces - 1) * MAX_CHUNK
    value = np.repeat(values, pieces)
    width = np.searchsorted(1 << RUN_WIDTHS, chunk, side="left")  # smallest width with length − 1 < 2^width
    header_values = [flat.size * CHANNELS, WORD_BITS - 1, *(RUN_WIDTHS - 1)]
    header_widths = [32, 5, 4, 4, 4, 4]
    fields = np.stack([np.ones_like(chunk), width, chunk - 1, value], axis=1).ravel()
    widths = np.stack([np.ones_like(chunk), np.full_like(chunk, 2), RUN_WIDTHS[width], np.full_like(chunk, 8)], axis=1)
    fields = np.concatenate((header_values, fields)).astype(np.int64)
    widths = np.concatenate((header_widths, widths.ravel())).astype(np.int64)
    field_of_bit = np.repeat(np.arange(len(fields)), widths)
    place = np.arange(int(widths.sum())) - np.repeat(np.cumsum(widths) - widths, widths)
    bits = (fields[field_of_bit] >> (widths[field_of_bit] - 1 - place)) & 1
    return np.packbits(bits.astype(np.uint8)).tolist()


def labeling_config(labels: list[str]) -> str:
    """The labeling config: an image with brush labels for ``labels``, each its VOC palette colour."""
    lines = ["<View>", f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>']
    lines.append(f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">')
    for index, name in enumerate(labels):
        colour = "#" + "".join(f"{int(c):02x}" for c in COLOURS[(index + 1) % 256])
        lines.append(f"    <Label value={quoteattr(name)} background={quoteattr(colour)}/>")
    lines += ["  </BrushLabels>", "</View>", ""]
    return "\n".join(lines)


class LabelStudioWriter:
    def __init__(self, folder: Path, classes: ClassNames | None, images: ImageReader, config_id: str) -> None:
        self.folder, self.classes, self.images, self.config_id = folder, classes, images, config_id
        self.stream = (folder / "tasks.json").open("w")
        self.tasks = JsonArray(self.stream)
        self.labels: dict[str, None] = {}  # every label used, in first-use order
        self.results = 0

    def write(self, row: Row) -> None:
        height, width = row.size
        results, scores = [], []
        for segment in row.segments:
            name = row.segment_name(segment)
            self.labels.setdefault(name, None)
            result = {
                "id": f"s{segment['segment_id']}",
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": "brushlabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {"format": "rle", "rle": brush_rle(rle_to_mask(segment["rle"])), "brushlabels": [name]},
            }
            if segment.get("score") is not None:
                result["score"] = float(segment["score"])
                scores.append(float(segment["score"]))
            results.append(result)
        prediction: dict[str, Any] = {"model_version": f"dsseg-{self.config_id}", "result": results}
        if scores:
            prediction["score"] = float(np.mean(scores))
        root = self.images.root
        image = f"{root.rstrip('/')}/{row.image_id}" if root else row.row["source"]  # a URL prefix, kept as given
        self.tasks.add({"data": {"image": image, "image_id": row.image_id}, "predictions": [prediction]})
        self.results += len(results)

    def finish(self) -> dict[str, Any]:
        self.tasks.close()
        self.stream.close()
        (self.folder / "labeling_config.xml").write_text(labeling_config(list(self.labels)))
        return {"tasks": self.tasks.count, "results": self.results, "labels": len(self.labels)}
