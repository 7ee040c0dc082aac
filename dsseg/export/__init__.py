"""``dsseg export``: a segment-job (or pseudo-label) output in the format a labelling or training tool reads.

Formats (one module each): ``hf`` (Hugging Face ``datasets`` Parquet), ``labelstudio`` (tasks with
brush predictions), ``cvat`` (Segmentation mask 1.1), ``fiftyone`` (ImageSegmentationDirectory),
``coco`` (instances JSON, RLE) and ``voc`` (PNG label maps). Every format streams the rows of one
config part file by part file (``dsseg.export.rows``): error rows are skipped and counted, memory
does not grow with the output, and the folder is written aside and moved into place whole
(``dsseg.export.folder``). Only the core dependencies are used; the tools' own libraries only
check the result (the test extras).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FORMATS", "ExportSettings", "export"]


def __getattr__(name: str) -> Any:
    """Names load on first use, so that ``dsseg export --help`` answers at once."""
    if name in ("FORMATS", "ExportSettings"):
        from dsseg.export import settings

        return getattr(settings, name)
    if name == "export":
        from dsseg.export.run import export

        return export
    raise AttributeError(f"module 'dsseg.export' has no attribute {name!r}")
