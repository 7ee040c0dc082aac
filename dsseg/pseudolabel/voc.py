"""The VOC layout of a pseudo-label run: label PNGs and image copies written by Ray tasks, then the lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

from dsseg.evaluation.exports import manifest_ids, voc_label_map, write_voc_png
from dsseg.io.files import write_file
from dsseg.io.images import decode_image
from dsseg.io.results import part_uris, read_part
from dsseg.io.sources import read_bytes
from dsseg.job.config import SegmentJob
from dsseg.pseudolabel.inputs import ROW_COLUMNS, file_stem


def copy_image(row: dict[str, Any], folder: Path) -> None:
    """The source image as ``<stem>.jpg`` (bytes kept for JPEGs, others re-encoded), atomically."""
    path = folder / f"{file_stem(row['image_id'])}.jpg"
    if path.exists():
        return
    data = read_bytes(row["source"])
    if data[:3] == b"\xff\xd8\xff":
        write_file(path, lambda stream: stream.write(data))
    else:
        rgb = decode_image(data)[0]
        write_file(path, lambda stream: Image.fromarray(rgb).save(stream, format="JPEG", quality=95))


def export_part(
    batch: pa.Table, classes: tuple[str, ...], voc: str, copy_images: bool, weak: bool, manifest: str
) -> pa.Table:
    """Ray task: the ok rows of some part files whose images are in ``manifest`` → label PNGs
    (weak rows; existing ones kept) and JPEGImages copies; returns how many PNGs it wrote."""
    written = 0
    for uri in batch.column("path").to_pylist():
        for row in read_part(uri, columns=ROW_COLUMNS, image_ids=manifest_ids(manifest)).to_pylist():
            if row["status"] != "ok":
                continue
            path = Path(voc) / "SegmentationClassAug" / f"{file_stem(row['image_id'])}.png"
            if weak and not path.exists():
                write_voc_png(path, voc_label_map(row, classes))
                written += 1
            if copy_images:
                copy_image(row, Path(voc) / "JPEGImages")
    return pa.table({"written": [written]})


def start_label_folder(labels: Path, identity: dict[str, Any], stems: set[str]) -> int:
    """Make ``labels`` (the PNG folder) hold only PNGs of this setting and these images: when the
    weak config or the class list differs from the one recorded in ``labels/../pseudolabel.json``,
    every PNG is removed (they are rewritten); PNGs of images no longer weakly labelled are
    removed too. Records ``identity``; returns how many PNGs were removed."""
    record = labels.parent / "pseudolabel.json"
    changed = record.is_file() and json.loads(record.read_text()) != identity
    removed = 0
    for png in labels.glob("*.png") if labels.exists() else []:
        if changed or png.stem not in stems:
            png.unlink(missing_ok=True)
            removed += 1
    write_local_json(record, identity)
    return removed


def export_voc(jobs: dict[str, SegmentJob], classes: tuple[str, ...], voc: Path, copy_images: bool) -> dict[str, int]:
    """Label PNGs and images on Ray tasks over the part files of this run's configs, then the
    image and class lists; returns how many PNGs were written and removed."""
    import ray

    written, removed = 0, 0
    labels = voc / "SegmentationClassAug"
    weak = jobs.get("weak")
    identity = {"config_id": weak.config_ids()[0] if weak else None, "classes": list(classes)}
    stems = {file_stem(image_id) for image_id in manifest_ids(weak.input).to_pylist()} if weak else set()
    removed = start_label_folder(labels, identity, stems)  # no weakly labelled images: no label PNGs
    for kind, job in jobs.items():
        parts = part_uris(job.output, job.config_ids())
        if not parts:
            continue
        dataset = ray.data.from_items([{"path": p} for p in parts], override_num_blocks=min(len(parts), 64))
        kwargs = {
            "classes": classes,
            "voc": str(voc),
            "copy_images": copy_images,
            "weak": kind == "weak",
            "manifest": job.input,
        }
        for batch in dataset.map_batches(
            export_part, fn_kwargs=kwargs, batch_size=1, batch_format="pyarrow"
        ).iter_batches(batch_format="pyarrow"):
            written += sum(batch.column("written").to_pylist())
    names = sorted(p.stem for p in labels.glob("*.png")) if labels.exists() else []
    listing = "".join(f"{n}\n" for n in names)
    for split in ("train_aug", "train"):  # SegmentationClassAug-style, and the name VOC loaders default to
        write_file(voc / "ImageSets" / "Segmentation" / f"{split}.txt", lambda stream: stream.write(listing.encode()))
    write_file(voc / "class_names.txt", lambda stream: stream.write("".join(f"{n}\n" for n in classes).encode()))
    plain = voc / "SegmentationClass"
    if labels.exists() and not plain.exists():
        plain.symlink_to("SegmentationClassAug", target_is_directory=True)  # VOC's own folder name, same files
    return {"written": written, "removed": removed}


def write_local_json(path: Path, document: Any) -> Path:
    """``document`` as JSON at the local ``path``, atomically."""
    return write_file(path, lambda stream: stream.write(json.dumps(document).encode()))
