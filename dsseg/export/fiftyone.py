"""``fiftyone``: FiftyOne's ``ImageSegmentationDirectory`` layout.

```
data/<stem>.<ext>        the images (stored bytes kept when they are the masks' frame)
labels/<stem>.png        the masks: class ids (named outputs; 255 ignore) or segment ids (8-bit, 16-bit past 255)
mask_targets.json        {"<value>": "<name>"}: the dataset's mask targets (FiftyOne does not read them from
                         the layout: set dataset.default_mask_targets from this file)
```

``fiftyone.Dataset.from_dir(dataset_dir=DIR, dataset_type=fiftyone.types.ImageSegmentationDirectory)``
pairs ``data/`` and ``labels/`` by stem. Stems are flat (``horses/horse001.jpg`` → ``horses__horse001``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dsseg.export.rows import ClassNames, ImageReader, Row
from dsseg.io.files import file_stem
from dsseg.io.masks import png_bytes


class FiftyOneWriter:
    def __init__(self, folder: Path, classes: ClassNames | None, images: ImageReader) -> None:
        self.folder, self.classes, self.images = folder, classes, images
        (folder / "data").mkdir()
        (folder / "labels").mkdir()
        self.count = 0
        self.max_segment = -1

    def write(self, row: Row) -> None:
        stem = file_stem(row.image_id)
        label = self.folder / "labels" / f"{stem}.png"
        if label.exists():
            raise FileExistsError(f"two image ids give the file name labels/{stem}.png")
        data, extension = self.images.read(row.row, row.size)
        mask = png_bytes(row.class_ids if self.classes is not None else row.segment_ids)
        (self.folder / "data" / f"{stem}{extension}").write_bytes(data)
        label.write_bytes(mask)
        if self.classes is None:
            self.max_segment = max(self.max_segment, int(row.segment_ids.max()))
        self.count += 1

    def mask_targets(self) -> dict[str, str]:
        if self.classes is not None:
            return {str(value): name for value, name in self.classes.id2label().items()}
        return {str(k): f"segment_{k}" for k in range(self.max_segment + 1)}

    def finish(self) -> dict[str, Any]:
        (self.folder / "mask_targets.json").write_text(json.dumps(self.mask_targets(), indent=1) + "\n")
        return {"images": self.count}
