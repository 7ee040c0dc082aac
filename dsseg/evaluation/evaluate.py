"""Benchmark evaluation on Ray (``dsseg evaluate``, ``dsseg.commands.evaluate``): segment a
dataset's images with one or more method configs (the segment job, resumable), score every row
against the ground truth in an actor pool, sum the per-image statistics per config, and write
OUTPUT/metrics.json, per_image.parquet, report.md and report.html. ``evaluate`` takes an
``EvaluationRequest`` (``dsseg.evaluation.plan``)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dsseg.checks import needs_image_classes
from dsseg.errors import ConfigError
from dsseg.evaluation.datasets import Dataset, RegionAnnotations, load_dataset
from dsseg.evaluation.metrics import json_ready
from dsseg.evaluation.plan import EvaluationRequest, Plan, make_plan
from dsseg.evaluation.preset import frame_text
from dsseg.evaluation.presets import matching_presets
from dsseg.evaluation.report import (
    ConfigReport,
    Panel,
    ground_truth_panel,
    html_report,
    markdown_report,
    segmentation_panel,
)
from dsseg.evaluation.scoring import ModelFrame, evaluate_parts, to_model_frame
from dsseg.io.images import decode_image
from dsseg.io.masks import decode_segments
from dsseg.io.results import part_uris, read_results
from dsseg.io.sources import read_bytes
from dsseg.job.config import SegmentJob
from dsseg.job.runner import init_ray, library_versions, run_segment_job
from dsseg.spec import MethodSpec


def claim_output(output: Path, identity: dict[str, Any]) -> None:
    """Record which dataset OUTPUT evaluates (``evaluation.json``); refuse another one, whose image
    ids could collide with this one's rows in OUTPUT/run."""
    path = output / "evaluation.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != identity:
            raise ValueError(f"{output} holds an evaluation of {previous}; give another --output for {identity}")
        return
    output.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=2))


def display_name(spec: MethodSpec) -> str:
    """``diffseg`` or ``diffseg kl_threshold=0.9`` — the method and its non-default parameters."""
    extras = " ".join(f"{k}={v}" for k, v in sorted(spec.params.items()) if k not in ("classes", "geometry"))
    return f"{spec.method} {extras}".strip()


def write_manifest(dataset: Dataset, configs: tuple[MethodSpec, ...], path: Path, limit: int | None) -> Path:
    """The dataset's images as a segment-job manifest; with an open-vocabulary config that names no
    classes, every image's candidates are the dataset's classes (background excluded)."""
    table = dataset.manifest(limit)
    if any(needs_image_classes(spec.resolved) for spec in configs):
        names = [name for name in dataset.class_names if name != "background"]
        table = table.append_column("classes", pa.array([names] * len(table), pa.list_(pa.string())))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def build_job(
    plan: Plan,
    request: EvaluationRequest,
    dataset: Dataset,
    configs: tuple[MethodSpec, ...],
    folder: Path,
    limit: int | None,
) -> SegmentJob:
    """The segment job over ``dataset``'s first ``limit`` images into ``folder``/run (its settings
    validated here, before any model runs): stored pixel order, masks in the scoring frame."""
    manifest = write_manifest(dataset, configs, folder / "manifest.parquet", limit)
    return SegmentJob(
        input=str(manifest), output=str(folder / "run"), configs=configs, backbone=plan.backbone, device=request.device,
        dtype=request.dtype, offline=request.offline, compile=request.compile, batch_size=request.batch_size, num_workers=request.num_workers,
        retry_errors=True, exif_transpose=False, mask_frame="model" if plan.frame == "model" else "original",
        class_filter=plan.class_filter, captioner=plan.captioner,
    )  # fmt: skip


def segment_and_score(
    plan: Plan, request: EvaluationRequest, job: SegmentJob, options: dict[str, Any], limit: int | None
) -> tuple[dict[str, Any], dict[str, Any], pa.Table]:
    """Run (or resume) ``job`` and score its rows: (segment summary, {config_id: ConfigScores},
    per-image records)."""
    summary = run_segment_job(job)
    init_ray()
    start = time.perf_counter()
    parts = part_uris(job.output, job.config_ids())  # this run's configs only: the folder may hold earlier sweeps
    totals, records = evaluate_parts(
        parts,
        plan.dataset,
        request.root,
        options,
        plan.frame,
        model_frame(job, plan.score_size),
        request.num_workers,
        limit,
    )
    summary["scoring_seconds"] = round(time.perf_counter() - start, 2)
    return summary, totals, records


def model_frame(job: SegmentJob, score_size: int | None = None) -> ModelFrame:
    return ModelFrame(job.preparation.image_size, job.preparation.geometry, score_size)


def tune(plan: Plan, request: EvaluationRequest, output: Path) -> dict[int, dict[str, Any]]:
    """Choose each tuned parameter on its tuning split: every grid value is a config sharing one
    forward; the best score wins (ties: the lower value). Returns config index → record. An oracle
    tuning sweeps the evaluated images themselves, into OUTPUT/run, so the evaluation that follows
    finds the chosen config's rows already written."""
    chosen: dict[int, dict[str, Any]] = {}
    for split, oracle in sorted({(t.split, t.oracle) for t in plan.tunings.values()}):
        indices = [i for i, t in plan.tunings.items() if (t.split, t.oracle) == (split, oracle)]
        options = {**plan.options, "split": split} if split else dict(plan.options)
        dataset = load_dataset(plan.dataset, request.root, **options)
        sweep = {
            (i, value): MethodSpec(plan.configs[i].method, {**plan.configs[i].params, plan.tunings[i].param: value})
            for i in indices
            for value in plan.tunings[i].values
        }
        unique = unique_specs(sweep.values())
        folder, limit = (output, request.limit) if oracle else (output / "tune" / split, request.tune_limit)
        job = build_job(plan, request, dataset, unique, folder, limit)
        summary, totals, _ = segment_and_score(plan, request, job, options, limit)
        id_of = job.config_ids()
        ids = {key: id_of[unique.index(spec)] for key, spec in sweep.items()}
        for i in indices:
            tuning = plan.tunings[i]
            scores = {}
            for value in tuning.values:
                result = totals[ids[(i, value)]].results() if ids[(i, value)] in totals else {}
                scores[value] = result.get(tuning.protocol, {}).get(tuning.metric, float("nan"))
            finite = [v for v in tuning.values if np.isfinite(scores[v])]
            if not finite:
                raise ValueError(
                    f"tuning {tuning.param} on split {split}: no image could be scored ({summary['errors_by_reason']})"
                )
            best = max(finite, key=lambda v: (scores[v], -v))  # the highest score; ties go to the lower value
            chosen[i] = {
                "param": tuning.param, "value": best, "split": split, "oracle": oracle, "images": len(dataset.samples(limit)),
                "protocol": tuning.protocol, "metric": tuning.metric, "scores": {f"{v:g}": scores[v] for v in tuning.values},
            }  # fmt: skip
        record = folder / ("oracle_tuning.json" if oracle else "tuning.json")
        record.write_text(json.dumps(json_ready({str(i): chosen[i] for i in indices}), indent=2))
    return chosen


def unique_specs(specs) -> tuple[MethodSpec, ...]:
    """``specs`` without repeats, in order (a job runs each config once)."""
    out: list[MethodSpec] = []
    for spec in specs:
        if spec not in out:
            out.append(spec)
    return tuple(out)


def tuning_note(record: dict[str, Any]) -> str:
    """How a tuned parameter was chosen, for the report."""
    grid = [float(v) for v in record["scores"]]
    if record["oracle"]:
        return (
            f"{record['param']} = {record['value']:g}: oracle threshold, the best of {min(grid):g}–{max(grid):g} on "
            f"the evaluated images themselves ({record['images']} images), as the paper chose it; not a held-out number"
        )
    return f"{record['param']} = {record['value']:g}, chosen on split {record['split']!r} ({record['images']} images)"


def pick_report_images(records: pa.Table, config_id: str, count: int, key: str) -> list[tuple[str, str]]:
    """(heading, image_id): the best, the worst and random images of one config by ``key``."""
    rows = [
        r
        for r in records.to_pylist()
        if r["config_id"] == config_id and r.get(key) is not None and not np.isnan(r[key])
    ]
    rows.sort(key=lambda r: -r[key])
    chosen: list[tuple[str, str]] = []
    seen: set[str] = set()
    rest = rows[count:-count] if len(rows) > 2 * count else []
    for label, group in (
        ("best", rows[:count]),
        ("worst", rows[::-1][:count]),
        ("random", random.Random(0).sample(rest, min(count, len(rest)))),
    ):
        for r in group:
            if r["image_id"] not in seen:
                seen.add(r["image_id"])
                chosen.append((f"{label}: {r['image_id']} ({key} {r[key]:.1f})", r["image_id"]))
    return chosen


def report_rows(
    dataset: Dataset, job: SegmentJob, frame: str, configs: list[ConfigReport], picks: list[tuple[str, str]]
) -> list[tuple[str, list[Panel]]]:
    """Report panels of the picked images, drawn in the frame they were scored in."""
    run = job.output
    samples = {s.image_id: s for s in dataset.samples()}
    wanted = [image_id for _, image_id in picks]
    by_key = {}
    for config in configs:
        try:
            rows = read_results(run, config.config_id, image_ids=wanted).to_pylist()
        except FileNotFoundError:
            continue
        by_key.update({(r["config_id"], r["image_id"]): r for r in rows})
    out = []
    for heading, image_id in picks:
        sample = samples[image_id]
        rgb = decode_image(read_bytes(sample.image), exif_transpose=False)[0]
        truth = dataset.ground_truth(sample)
        regions = isinstance(truth, RegionAnnotations)
        gt = truth.annotators[0] if regions else truth.labels
        if frame == "model":
            rgb, gt = job.preparation.prepare(rgb)[0], to_model_frame(gt, model_frame(job))
        panels = [Panel("image", rgb)]
        if regions:
            panels.append(segmentation_panel("annotator 1", rgb, gt, []))
        else:
            panels.append(ground_truth_panel(gt, dataset.class_names))
        for config in configs:
            row = by_key.get((config.config_id, image_id))
            if row is None or row["status"] != "ok":
                continue
            labels = decode_segments(row["segments"])
            names = [segment["label"] for segment in row["segments"]]
            panels.append(segmentation_panel(config.name, rgb, labels, names))
        out.append((heading, panels))
    return out


def evaluate(request: EvaluationRequest) -> int:
    """Run the evaluation ``request`` asks for; exit status 0 when every image was segmented (1: rows
    are missing; rerun to resume). Errors a user can act on raise ``ValueError`` or ``OSError``."""
    output = Path(request.output)
    if output.exists() and not output.is_dir():
        raise ConfigError("output", f"{output} is a file; give a folder (new, or an earlier evaluation's)")
    plan = make_plan(request)
    dataset = load_dataset(plan.dataset, request.root, **plan.options)
    classes = list(plan.options.get("class_names", ())) or None
    claim_output(
        output,
        {
            "dataset": plan.dataset,
            "root": str(Path(request.root).resolve()),
            "split": plan.options.get("split"),
            "classes": classes,
        },
    )
    build_job(
        plan, request, dataset, unique_specs(plan.configs), output, request.limit
    )  # settings checked before any model runs
    tuned = tune(plan, request, output) if plan.tunings else {}
    configs = tuple(
        MethodSpec(spec.method, {**spec.params, tuned[i]["param"]: tuned[i]["value"]}) if i in tuned else spec
        for i, spec in enumerate(plan.configs)
    )
    unique = unique_specs(configs)  # an oracle and a held-out threshold may coincide
    job = build_job(plan, request, dataset, unique, output, request.limit)
    segment_summary, totals, records = segment_and_score(plan, request, job, plan.options, request.limit)
    id_of = job.config_ids()
    config_ids = [id_of[unique.index(spec)] for spec in configs]
    split_size = len(dataset.samples())
    reports = []
    for i, (cid, spec) in enumerate(zip(config_ids, configs)):
        how = {tuned[i]["param"]: "oracle" if tuned[i]["oracle"] else "split"} if i in tuned else {}
        matches = matching_presets(
            plan.dataset, spec, plan.frame, plan.backbone, plan.class_filter, how, plan.options.get("split"),
            plan.captioner, plan.score_size,
        )  # fmt: skip
        notes = (tuning_note(tuned[i]),) if i in tuned else ()
        if spec.method == "openvocab" and i not in tuned:
            notes += ("background_threshold not tuned (give --tune-on SPLIT): no preset matches an untuned threshold",)
        results = totals[cid].results() if cid in totals else {"images": 0}
        if matches and (results["images"] < split_size or results.get("failed")):
            notes += (f"partial: {results['images']} of the split's {split_size} images scored ({results.get('failed', 0)} failed); "
                      "the paper scored them all",)  # fmt: skip
        name = plan.preset.name if plan.preset and not request.params else display_name(spec)
        if i in tuned and len(plan.tunings) > 1:
            name += " (oracle threshold)" if tuned[i]["oracle"] else f" (threshold chosen on {tuned[i]['split']})"
        reports.append(ConfigReport(cid, name, spec.method, results, tuple(matches), notes))
    metrics = {
        "dataset": plan.dataset,
        "root": str(request.root),
        "split": plan.options.get("split"),
        "frame": plan.frame,
        "score_size": plan.score_size,
        "backbone": plan.backbone,
        "preset": plan.preset.name if plan.preset else None,
        "images": len(dataset.samples(request.limit)),
        "configs": {
            (r.config_id if r.config_id not in config_ids[:i] else f"{r.config_id} {r.name}"): {
                "name": r.name, "method": r.method, "params": dict(spec.params),
                "presets": [{"name": m.preset.name, "backbone": m.backbone} for m in r.matches],
                "tuning": tuned.get(i), **r.results,
            }
            for i, (r, spec) in enumerate(zip(reports, configs))
        },
        "segment_job": segment_summary,
        "scoring_seconds": segment_summary.pop("scoring_seconds"),
        "versions": library_versions(),
    }  # fmt: skip
    (output / "metrics.json").write_text(json.dumps(json_ready(metrics), indent=2, default=str))
    pq.write_table(records, output / "per_image.parquet")
    tables = markdown_report(plan.dataset, frame_text(plan.frame, plan.score_size), reports, plan.backbone)
    (output / "report.md").write_text(tables)
    key = "miou" if dataset.class_names else "covering"  # region benchmarks (BSDS500) have no classes
    picks = pick_report_images(records, config_ids[0], request.report_images, key)
    html_report(
        output / "report.html",
        f"dsseg evaluation: {plan.dataset}",
        report_rows(dataset, job, plan.frame, reports, picks),
        tables="\n".join(tables.splitlines()[1:]),  # without its title: the page has its own
    )
    print((output / "report.md").read_text())
    print(
        json.dumps(
            {
                "metrics": str(output / "metrics.json"),
                "report": str(output / "report.html"),
                "complete": segment_summary["complete"],
            }
        )
    )
    return 0 if segment_summary["complete"] else 1
