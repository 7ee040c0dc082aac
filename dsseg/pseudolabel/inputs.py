"""A pseudo-label run's images, classes and segment jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dsseg.errors import ConfigError
from dsseg.evaluation.exports import class_list as labels_class_list
from dsseg.evaluation.exports import labels_from_coco, labels_from_voc, manifest_ids
from dsseg.io.files import file_stem, write_file
from dsseg.io.results import read_results
from dsseg.io.sources import list_inputs
from dsseg.job.config import SegmentJob, parse_shard
from dsseg.methods import get_method
from dsseg.model.config import EXTRACT_PARAMS, REPLACES
from dsseg.model.vocabularies import get_vocabulary
from dsseg.pseudolabel.settings import PseudoLabelRequest
from dsseg.spec import MethodSpec

ROW_COLUMNS = ["image_id", "source", "width", "height", "status", "error", "segments"]


def input_rows(request: PseudoLabelRequest) -> list[dict[str, Any]]:
    """``{image_id, uri, labels}`` of every image (labels may be empty)."""
    if request.voc_root:
        return labels_from_voc(request.voc_root, request.split)
    if request.coco_instances:
        return labels_from_coco(request.coco_instances, request.coco_images)
    items = list_inputs(request.input)
    if any(item["offset"] is not None for item in items):
        raise ValueError("tar shards are not supported here: give a manifest or a folder")
    return [{"image_id": i["image_id"], "uri": i["source"], "labels": list(i["classes"] or [])} for i in items]


def classes_for(request: PseudoLabelRequest, rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """Background, then the class list's names (or the labels present): at most 255 in all, as
    the label PNGs are 8-bit with 255 for ignore."""
    if request.class_list:
        path = Path(request.class_list)
        names = (
            [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if path.is_file()
            else list(get_vocabulary(request.class_list))
        )
        unknown = sorted({n for r in rows for n in r["labels"]} - set(names))
        if unknown:
            raise ValueError(f"labels {unknown[:5]} are not in --class-list {request.class_list}")
        classes = ("background", *[n for n in names if n != "background"])
    else:
        classes = labels_class_list(r["labels"] for r in rows)
    if len(classes) > 255:
        raise ValueError(f"{len(classes)} classes with background do not fit 8-bit label PNGs (0..254, 255 = ignore)")
    return classes


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


def segment_jobs(request: PseudoLabelRequest, rows: list[dict[str, Any]], output: Path) -> dict[str, SegmentJob]:
    """One segment job per kind present: weak (openvocab) and class-agnostic, for a ``resolved()``
    request. A ``--param`` that neither method takes is an error."""
    check_unique_stems(rows)
    extra = dict(request.params)
    methods = ("openvocab", request.agnostic_method)
    unknown = sorted(set(extra) - set(params_for(methods[0], extra)) - set(params_for(methods[1], extra)))
    if unknown:
        raise ConfigError(
            unknown[0],
            f"is not a parameter of {methods[0]}, {methods[1]} or the extraction "
            f"(extraction parameters: {', '.join(sorted(EXTRACT_PARAMS))})",
        )
    common = dict(
        backbone=request.backbone, device=request.device, dtype=request.dtype, offline=request.offline, compile=request.compile, batch_size=request.batch_size,
        num_workers=request.num_workers, limit=request.limit, shard=parse_shard(request.shard), retry_errors=True,
    )  # fmt: skip
    preset = request.preset_setting
    replaced = {REPLACES[name] for name in extra if name in REPLACES}  # --param timestep=100 replaces timesteps
    weak_params = {
        **{k: v for k, v in (preset.params if preset else {}).items() if k not in replaced},
        **({"descriptors": "caption"} if request.captioner else {}),
        "ignore_margin": request.ignore_margin,
        "pamr_iterations": request.pamr_iterations,
        **({"crf_iterations": request.crf_iterations} if request.crf_iterations else {}),
        **params_for("openvocab", extra),
    }
    if request.background_threshold is not None:
        weak_params["background_threshold"] = request.background_threshold
    jobs = {}
    for kind, chosen, spec in (
        ("weak", [r for r in rows if r["labels"]], MethodSpec("openvocab", weak_params)),
        (
            "agnostic",
            [r for r in rows if not r["labels"]],
            MethodSpec(request.agnostic_method, params_for(request.agnostic_method, extra)),
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
        captioner = request.captioner if kind == "weak" else None
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
