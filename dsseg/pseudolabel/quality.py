"""Pseudo-labels against ground truth: checks before any image is segmented, and the quality report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dsseg.evaluation.metrics import MetricState
from dsseg.io.images import InputError, displayed_size
from dsseg.io.sources import read_bytes
from dsseg.pseudolabel.inputs import file_stem


def ground_truth_names(spec: str | None, classes: tuple[str, ...]) -> tuple[str, ...]:
    """The class name of each ground-truth value 0, 1, … (``--gt-classes``: comma-separated names
    or a file of lines; None: the pseudo-labels' own order). Names not in ``classes`` are refused."""
    if spec is None:
        return classes
    path = Path(spec)
    text = path.read_text().splitlines() if path.is_file() else spec.split(",")
    names = tuple(name.strip() for name in text if name.strip())
    unknown = [name for name in names if name not in classes]
    if not names or unknown or len(names) > 255:
        raise ValueError(
            f"--gt-classes {spec!r}: {'names ' + str(unknown) + ' are' if unknown else 'expects 1 to 255 names,'} "
            f"not among the pseudo-label classes {list(classes)}"
        )
    return names


def ground_truth_lookup(names: tuple[str, ...], classes: tuple[str, ...]) -> np.ndarray:
    """(256,) int64: ground-truth value → pseudo-label class index; 255 stays 255 (ignore),
    values without a name become −1."""
    lookup = np.full(256, -1, dtype=np.int64)
    lookup[: len(names)] = [classes.index(name) for name in names]
    lookup[255] = 255
    return lookup


HEADER_BYTES = 1 << 16  # enough for the headers of nearly every JPEG and PNG


def header_size(uri: str) -> tuple[int, int]:
    """An image's displayed (H, W) from its first ``HEADER_BYTES`` when it is a JPEG (whose EXIF
    orientation comes before the pixels), else, or when the header runs longer (e.g. a large ICC
    profile), from the whole file; ``InputError`` for a file that is not an image."""
    head = read_bytes(uri, 0, HEADER_BYTES)
    if head.startswith(b"\xff\xd8"):  # other formats may keep EXIF after the pixel data (PNG eXIf)
        try:
            return displayed_size(head)
        except InputError:
            pass
    return displayed_size(read_bytes(uri))


def check_ground_truth(rows: list[dict[str, Any]], gt_dir: Path, names: tuple[str, ...], named: bool) -> list[str]:
    """What would make the quality report wrong, found before any image is segmented: one line per
    problem. A ground truth of another size than its image (as decoded, EXIF applied); values
    without a name in ``names``; and, unless the values were ``named`` (``--gt-classes``), ground
    truth holding only 0 and 1 where the class list has more than one class: a binary mask, whose 1
    would be scored as the list's first class."""
    if not gt_dir.is_dir():
        return [f"--gt-dir {gt_dir} is not a folder"]
    problems, highest, compared = [], 0, 0
    for row in rows:
        truth_path = gt_dir / f"{file_stem(row['image_id'])}.png"
        if not truth_path.exists():
            continue
        try:
            truth = np.asarray(Image.open(truth_path))
        except OSError as error:
            problems.append(f"{truth_path}: cannot be read ({error})")
            continue
        if truth.ndim != 2:
            problems.append(f"{truth_path}: {truth.shape} is not a single-channel label PNG")
            continue
        try:
            size = header_size(row["uri"])
        except (OSError, InputError):
            size = truth.shape  # an unreadable image becomes the segment job's error row, not a problem here
        if truth.shape != size:
            problems.append(f"{truth_path}: {truth.shape[1]}×{truth.shape[0]}, its image {size[1]}×{size[0]}")
            continue
        values = np.unique(truth)
        unnamed = [int(v) for v in values if v != 255 and v >= len(names)]
        if unnamed:
            problems.append(f"{truth_path}: values {unnamed[:5]} have no class name (there are {len(names)})")
        highest, compared = max(highest, int(values[values != 255].max(initial=0))), compared + 1
    if compared and not named and highest <= 1 and len(names) > 2:
        problems.append(
            f"the ground truth holds only 0 and 1 (a binary mask?), which would be scored as {names[0]!r} and "
            f"{names[1]!r} of {len(names)} classes: name its values with --gt-classes, e.g. --gt-classes background,CLASS"
        )
    return problems


def quality(
    weak: list[dict[str, Any]], classes: tuple[str, ...], voc: Path, gt_dir: Path, lookup: np.ndarray
) -> dict[str, Any]:
    """mIoU of the pseudo-label PNGs against ``gt_dir/<stem>.png`` (values mapped to classes by
    ``lookup``, 255 ignored; pseudo-label 255 counts as no class), per class, and the share of
    pixels left 255. An image whose ground truth does not fit is left out, with its reason in
    ``skipped``; the report never fails the run."""
    state, ignored, pixels, compared = MetricState(len(classes)), 0, 0, 0
    skipped: dict[str, str] = {}
    for row in weak:
        stem = file_stem(row["image_id"])
        truth_path = gt_dir / f"{stem}.png"
        if not truth_path.exists():
            continue
        pred = np.asarray(Image.open(voc / "SegmentationClassAug" / f"{stem}.png")).astype(np.int64)
        truth = lookup[np.asarray(Image.open(truth_path)).astype(np.int64)]
        if truth.shape != pred.shape or (truth < 0).any():
            shape_fits = truth.shape == pred.shape
            skipped[row["image_id"]] = "unnamed_values" if shape_fits else f"size {truth.shape} ≠ {pred.shape}"
            continue
        ignored += int((pred == 255).sum())
        pixels += pred.size
        pred[pred == 255] = len(classes)
        state = state + MetricState.of_image(pred, truth, len(classes), semantic=True)
        compared += 1
    if not compared:
        return {"images": 0, "skipped": skipped}
    result = state.result("semantic")
    return {
        "images": compared,
        "skipped": skipped,
        "miou": result["miou"],
        "acc": result["acc"],
        "per_class_iou": dict(zip(classes, result["per_class_iou"])),
        "ignored_fraction": ignored / pixels,
    }
