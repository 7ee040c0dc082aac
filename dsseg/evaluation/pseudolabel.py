"""Pseudo-label datasets on Ray: image-level labels (or none) → pixel pseudo-labels for training.

    python jobs/pseudolabel.py --input MANIFEST_OR_DIR --output DIR [--format voc,coco] [--backbone ...]
    python jobs/pseudolabel.py --voc-root VOCdevkit/VOC2012 --split train --output DIR --gt-dir VOCdevkit/VOC2012/SegmentationClass
    python jobs/pseudolabel.py --coco-instances instances_train2017.json --coco-images train2017/ --output DIR
    python jobs/pseudolabel.py --voc-root VOCdevkit/VOC2012 --output DIR --preset diffsegmenter-voc2012-train --gt-dir …

Images with labels (a manifest's ``labels``/``classes`` column, VOC XML objects, COCO instance
categories) get weakly supervised masks: the open-vocabulary method restricted to their classes
plus background, uncertain pixels 255. Images without labels get class-agnostic object masks from
``--agnostic-method`` (diffseg or ncut segments, filtered). Writes into OUTPUT:

  VOCdevkit/VOC2012/: JPEGImages/<id>.jpg, SegmentationClassAug/<id>.png (palette, 0..K−1 and
  255; SegmentationClass links to it), ImageSets/Segmentation/train_aug.txt (= train.txt),
  class_names.txt                                                      (--format voc)
  coco/annotations.json (compressed RLE, string counts; ids by sorted image id)  (--format coco)
  run-weak/, run-agnostic/: the segment rows (Parquet), quality.json (with --gt-dir), summary.json

Every file is written to a temporary name and moved into place; re-running resumes (finished
rows and PNGs are kept), and --shard I/N jobs may share one output: the COCO file is rebuilt from
all rows present at the end of each run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dsseg.cli import add_model_arguments, batch_size_value, parse_param_values, plain
from dsseg.evaluation.exports import (
    agnostic_segments,
    class_list,
    coco_document,
    labels_from_coco,
    labels_from_voc,
    manifest_ids,
    voc_label_map,
    write_voc_png,
)
from dsseg.evaluation.metrics import MetricState, json_ready
from dsseg.evaluation.presets import BLIP_LARGE, DIFFSEGMENTER_PARAMS, SD15
from dsseg.io.files import remove_stale_temporaries, write_file
from dsseg.io.images import InputError, decode_image, displayed_size
from dsseg.io.results import part_uris, read_part, read_results
from dsseg.io.sources import list_inputs, read_bytes
from dsseg.job.config import SegmentJob, parse_shard
from dsseg.job.runner import init_ray, run_segment_job
from dsseg.methods import get_method
from dsseg.model.config import DEFAULT_BACKBONE, EXTRACT_PARAMS, REPLACES
from dsseg.model.vocabularies import get_vocabulary
from dsseg.spec import MethodSpec

FORMATS = ("voc", "coco")
NO_BAND = "none"  # --ignore-margin none: no ignore band


def margin_value(text: str) -> float | str:
    """``--ignore-margin``: a number, or ``none`` for no ignore band."""
    if text.strip().lower() == NO_BAND:
        return NO_BAND
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number or {NO_BAND}; got {text!r}") from None


ROW_COLUMNS = ["image_id", "source", "width", "height", "status", "error", "segments"]


@dataclass(frozen=True)
class PseudoLabelPreset:
    """A published pseudo-label setting: the weak job's ``params`` (``--param`` still overrides, and so
    do ``--ignore-margin``, ``--pamr-iterations`` and ``--crf-iterations`` over its ``refinement``),
    its ``backbone`` and ``captioner`` (unless given), and the ``published`` quality, reported beside ours."""

    params: dict[str, Any]
    backbone: str
    published: dict[str, float]
    note: str
    refinement: dict[str, Any]
    captioner: str | None = None


# The weak job's refinement without a preset: PAMR and an ignore band (dsseg's choice for training labels).
DEFAULT_REFINEMENT = {"ignore_margin": 0.1, "pamr_iterations": 10, "crf_iterations": 0}
PSEUDO_LABEL_PRESETS = {
    "diffsegmenter-voc2012-train": PseudoLabelPreset(
        params={**{k: v for k, v in DIFFSEGMENTER_PARAMS.items() if k != "timestep"}, "timesteps": (1, 50, 100, 150)},
        backbone=SD15,
        published={"miou": 70.5},
        note="DiffSegmenter's VOC train pseudo-labels (70.5 mIoU; 65.3 without the BLIP prompts and '++'): the "
        "released VOC prompts (BLIP-large continuations, Compel's '++', the authors' spellings), attention averaged "
        "over t = 1, 50, 100, 150 as the paper (its released ptp_stable_best.py runs times = [100] alone: --param "
        "timestep=100 follows it), no PAMR and no ignore band, a dense CRF (10 mean-field steps) as the paper "
        "describes; the CRF's kernel settings are not published: dsseg's (DeepLab's) are used",
        refinement={"ignore_margin": None, "pamr_iterations": 0, "crf_iterations": 10},
        captioner=BLIP_LARGE,
    )
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("input (one of)")
    source.add_argument(
        "--input", help="manifest (.parquet/.jsonl: image_id, uri, labels) or an image folder (no labels)"
    )
    source.add_argument("--voc-root", help="a VOC2012 folder: labels from Annotations/*.xml of --split")
    source.add_argument(
        "--coco-instances", help="a COCO instances JSON: labels from its categories (with --coco-images)"
    )
    source.add_argument("--coco-images", help="the folder of the COCO images")
    parser.add_argument("--split", default="train", help="VOC split list (default %(default)s)")
    parser.add_argument(
        "--output", required=True, help="folder for the datasets, the segment rows and the reports (re-running resumes)"
    )
    parser.add_argument("--format", default="voc,coco", help="comma-separated: voc, coco (default %(default)s)")
    parser.add_argument(
        "--class-list",
        help="class order for the label PNGs: voc20, coco80, context59 or a file of names (background is prepended)",
    )
    parser.add_argument(
        "--ignore-margin",
        type=margin_value,
        help="pixels whose best score leads by less become 255, or none (default 0.1; a --preset's own)",
    )
    parser.add_argument("--background-threshold", type=float, help="background score (default: the method's)")
    parser.add_argument(
        "--pamr-iterations", type=int, help="image-aware refinement steps, 0 = off (default 10; a --preset's own)"
    )
    parser.add_argument(
        "--crf-iterations",
        type=int,
        help="dense-CRF refinement steps after PAMR, 0 = off; needs pip install -e '.[crf]' (default 0; a --preset's own)",
    )
    parser.add_argument(
        "--captioner",
        help="BLIP captioner (tiny | hub id | folder): continue each class prompt of the weak job with a conditional "
        "caption of the image (DiffSegmenter's augmented prompts, --param descriptors=caption)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PSEUDO_LABEL_PRESETS),
        help="a published pseudo-label setting for the weak job (its parameters and backbone; --param and "
        "--backbone still override); quality.json then reports the published scores beside ours",
    )
    parser.add_argument(
        "--agnostic-method", default="diffseg", choices=["diffseg", "ncut"], help="segments for images without labels"
    )
    parser.add_argument(
        "--min-area",
        type=float,
        default=0.01,
        help="smallest class-agnostic mask, fraction of the image (default %(default)s)",
    )
    parser.add_argument(
        "--max-masks", type=int, default=20, help="most class-agnostic masks per image (default %(default)s)"
    )
    parser.add_argument(
        "--keep-border-background", action="store_true", help="keep the segment touching the border most"
    )
    parser.add_argument(
        "--no-images", action="store_true", help="do not copy the images into VOCdevkit/VOC2012/JPEGImages"
    )
    parser.add_argument(
        "--gt-dir", help="ground-truth PNGs <image_id>.png (255 = ignore): a quality report (quality.json)"
    )
    parser.add_argument(
        "--gt-classes",
        help="names of the ground truth's values 0, 1, …: comma-separated or a file of lines, e.g. background,horse "
        "(default: the pseudo-labels' order, background then --class-list)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extraction parameter (both jobs) or a parameter of openvocab or --agnostic-method (that job)",
    )
    parser.add_argument("--limit", type=int, help="only the first N images (after --shard)")
    parser.add_argument("--shard", help="I/N: this job's share of the images")
    parser.add_argument(
        "--batch-size", type=batch_size_value, default=4, help="images per model call, or auto (default %(default)s)"
    )
    parser.add_argument("--num-workers", type=int, default=1, help="model actors (default %(default)s)")
    add_model_arguments(parser, backbone_default=None, note=", or the --preset's")
    args = parser.parse_args(argv)
    preset = PSEUDO_LABEL_PRESETS.get(args.preset)
    if args.backbone is None:
        args.backbone = preset.backbone if preset else DEFAULT_BACKBONE
    if args.captioner is None and preset and preset.captioner:
        args.captioner = preset.captioner
    for name, value in (preset.refinement if preset else DEFAULT_REFINEMENT).items():
        if getattr(args, name) is None:  # not given: the preset's, else dsseg's default
            setattr(args, name, value)
    if args.ignore_margin == NO_BAND:
        args.ignore_margin = None
    if sum(x is not None for x in (args.input, args.voc_root, args.coco_instances)) != 1:
        parser.error("give exactly one of --input, --voc-root, --coco-instances")
    if args.coco_instances and not args.coco_images:
        parser.error("--coco-instances needs --coco-images")
    args.formats = [f.strip() for f in args.format.split(",") if f.strip()]
    if not args.formats or set(args.formats) - set(FORMATS):
        parser.error(f"--format takes a comma-separated subset of {FORMATS}")
    if args.gt_dir and "voc" not in args.formats:
        parser.error("--gt-dir compares the VOC label PNGs: include voc in --format")
    if args.gt_classes and not args.gt_dir:
        parser.error("--gt-classes names the values of --gt-dir's PNGs: give --gt-dir too")
    return args


def input_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``{image_id, uri, labels}`` of every image (labels may be empty)."""
    if args.voc_root:
        return labels_from_voc(args.voc_root, args.split)
    if args.coco_instances:
        return labels_from_coco(args.coco_instances, args.coco_images)
    items = list_inputs(args.input)
    if any(item["offset"] is not None for item in items):
        raise ValueError("tar shards are not supported here: give a manifest or a folder")
    return [{"image_id": i["image_id"], "uri": i["source"], "labels": list(i["classes"] or [])} for i in items]


def classes_for(args: argparse.Namespace, rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """Background, then the class list's names (or the labels present): at most 255 in all, as
    the label PNGs are 8-bit with 255 for ignore."""
    if args.class_list:
        path = Path(args.class_list)
        names = (
            [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if path.is_file()
            else list(get_vocabulary(args.class_list))
        )
        unknown = sorted({n for r in rows for n in r["labels"]} - set(names))
        if unknown:
            raise ValueError(f"labels {unknown[:5]} are not in --class-list {args.class_list}")
        classes = ("background", *[n for n in names if n != "background"])
    else:
        classes = class_list(r["labels"] for r in rows)
    if len(classes) > 255:
        raise ValueError(f"{len(classes)} classes with background do not fit 8-bit label PNGs (0..254, 255 = ignore)")
    return classes


def file_stem(image_id: str) -> str:
    """A flat file name for an image id (folders → "__", extension dropped)."""
    return Path(image_id).with_suffix("").as_posix().replace("/", "__")


def check_unique_stems(rows: list[dict[str, Any]]) -> None:
    """Every image needs its own file name in the VOC folders: ids that flatten to the same stem
    ("a/b.jpg" and "a__b.png") are refused."""
    seen: dict[str, str] = {}
    for row in rows:
        stem = file_stem(row["image_id"])
        if seen.setdefault(stem, row["image_id"]) != row["image_id"]:
            raise ValueError(
                f"image ids {seen[stem]!r} and {row['image_id']!r} share the file name {stem!r}: give them distinct ids"
            )


def params_for(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The ``--param`` values that apply to ``method``: every extraction parameter and the
    method's own; the rest belong to the other job's method."""
    known = get_method(method).param_names | EXTRACT_PARAMS
    return {name: value for name, value in params.items() if name in known}


def segment_jobs(args: argparse.Namespace, rows: list[dict[str, Any]], output: Path) -> dict[str, SegmentJob]:
    """One segment job per kind present: weak (openvocab) and class-agnostic. A ``--param`` that
    neither method takes is an error."""
    check_unique_stems(rows)
    extra = parse_param_values(args.param)
    methods = ("openvocab", args.agnostic_method)
    unknown = sorted(set(extra) - set(params_for(methods[0], extra)) - set(params_for(methods[1], extra)))
    if unknown:
        raise ValueError(
            f"--param {unknown} is a parameter of neither {methods[0]} nor {methods[1]} nor the extraction; extraction parameters: {sorted(EXTRACT_PARAMS)}"
        )
    common = dict(
        backbone=args.backbone, device=args.device, dtype=args.dtype, offline=args.offline, compile=args.compile, batch_size=args.batch_size,
        num_workers=args.num_workers, limit=args.limit, shard=parse_shard(args.shard), retry_errors=True,
    )  # fmt: skip
    preset = PSEUDO_LABEL_PRESETS.get(args.preset)
    replaced = {REPLACES[name] for name in extra if name in REPLACES}  # --param timestep=100 replaces timesteps
    weak_params = {
        **{k: v for k, v in (preset.params if preset else {}).items() if k not in replaced},
        **({"descriptors": "caption"} if args.captioner else {}),
        "ignore_margin": args.ignore_margin,
        "pamr_iterations": args.pamr_iterations,
        **({"crf_iterations": args.crf_iterations} if args.crf_iterations else {}),
        **params_for("openvocab", extra),
    }
    if args.background_threshold is not None:
        weak_params["background_threshold"] = args.background_threshold
    jobs = {}
    for kind, chosen, spec in (
        ("weak", [r for r in rows if r["labels"]], MethodSpec("openvocab", weak_params)),
        (
            "agnostic",
            [r for r in rows if not r["labels"]],
            MethodSpec(args.agnostic_method, params_for(args.agnostic_method, extra)),
        ),
    ):
        if not chosen:
            continue
        manifest = output / "manifests" / f"{kind}.parquet"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "image_id": [r["image_id"] for r in chosen],
                "uri": [r["uri"] for r in chosen],
                "classes": [r["labels"] for r in chosen],
            }
        )
        write_file(manifest, lambda stream, table=table: pq.write_table(table, stream))
        captioner = args.captioner if kind == "weak" else None
        jobs[kind] = SegmentJob(
            input=str(manifest), output=str(output / f"run-{kind}"), configs=(spec,), captioner=captioner, **common
        )
    return jobs


def ok_rows(job: SegmentJob) -> list[dict[str, Any]]:
    """The ok rows of ``job``'s config for the images of its manifest (all shards): rows of
    earlier runs with other settings or other images in the same output are left out."""
    try:
        table = read_results(job.output, job.config_ids()[0], ROW_COLUMNS, image_ids=manifest_ids(job.input))
    except FileNotFoundError:
        return []
    return [row for row in table.to_pylist() if row["status"] == "ok"]


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = Path(args.output)
    try:
        rows = input_rows(args)
        classes = classes_for(args, rows)
        if args.gt_dir:
            names = ground_truth_names(args.gt_classes, classes)
            problems = check_ground_truth(
                [r for r in rows if r["labels"]], Path(args.gt_dir), names, args.gt_classes is not None
            )
            if problems:
                more = f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else ""
                raise ValueError(
                    "--gt-dir does not fit the images; nothing was segmented:\n  " + "\n  ".join(problems[:10]) + more
                )
        jobs = segment_jobs(args, rows, output)
    except (OSError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        summaries = {kind: run_segment_job(job) for kind, job in jobs.items()}
    except RuntimeError as error:  # missing backbone or captioner weights: the message says what to do
        print(f"error: {error}", file=sys.stderr)
        return 2
    weak = ok_rows(jobs["weak"]) if "weak" in jobs else []
    agnostic_rows = ok_rows(jobs["agnostic"]) if "agnostic" in jobs else []
    proposals = {
        row["image_id"]: agnostic_segments(row, args.min_area, args.max_masks, not args.keep_border_background)
        for row in agnostic_rows
    }
    summary: dict[str, Any] = {
        "classes": list(classes),
        "segment_jobs": summaries,
        "weak_images": len(weak),
        "agnostic_images": len(agnostic_rows),
    }
    summary["stale_temporaries_removed"] = sum(
        remove_stale_temporaries(output / folder) for folder in ("VOCdevkit", "coco")
    )
    voc = output / "VOCdevkit" / "VOC2012"  # the layout VOC loaders (torchvision, mmsegmentation) open unchanged
    if "voc" in args.formats:
        init_ray()
        pngs = export_voc(jobs, classes, voc, not args.no_images)
        summary["voc_pngs_written"], summary["voc_pngs_removed"] = pngs["written"], pngs["removed"]
    if "coco" in args.formats:
        everything = [r | {"file_name": f"{file_stem(r['image_id'])}.jpg"} for r in weak + agnostic_rows]
        document = coco_document(everything, classes, proposals)
        write_local_json(output / "coco" / "annotations.json", document)
        summary["coco"] = {"images": len(document["images"]), "annotations": len(document["annotations"])}
    if args.gt_dir:
        summary["quality"] = quality(weak, classes, voc, Path(args.gt_dir), ground_truth_lookup(names, classes))
        if args.preset:
            preset = PSEUDO_LABEL_PRESETS[args.preset]
            summary["quality"]["preset"] = {"name": args.preset, "published": preset.published, "note": preset.note}
        write_local_json(output / "quality.json", json_ready(summary["quality"]))
    summary = json_ready(summary)
    write_local_json(output / "summary.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "segment_jobs"}, indent=2, default=str))
    complete = all(s["complete"] for s in summaries.values())
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())


def write_local_json(path: Path, document: Any) -> Path:
    """``document`` as JSON at the local ``path``, atomically."""
    return write_file(path, lambda stream: stream.write(json.dumps(document).encode()))
