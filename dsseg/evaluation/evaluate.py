"""Benchmark evaluation on Ray: segment a dataset's images with one or more method configs (the
segment job, resumable), score every row against the ground truth in an actor pool, sum the
per-image statistics per config, and write the results.

    python jobs/evaluate.py --preset NAME --root DIR --output DIR [--backbone tiny|HUB_ID|DIR] [--limit N]
    python jobs/evaluate.py --list-presets
    python jobs/evaluate.py --dataset cocostuff27 --root DIR --output DIR \\
        [--methods diffseg,ncut | --config sweep.yaml] [--param NAME=VALUE ...] [--frame model|label] \\
        [--score-size N] [--tune-on SPLIT] [--limit N] [--batch-size 4] [--num-workers 1]

A preset (``--list-presets``) is one published table row: dataset, backbone, extraction, method
parameters, frame and protocol; the report prints its published number beside ours. Writes
OUTPUT/metrics.json (every protocol for every config), OUTPUT/per_image.parquet (one record per
image × config), OUTPUT/report.md (tables laid out like the papers') and OUTPUT/report.html
(+ report_files/: best, worst and random images with the ground truth and each config's
segments). The segment rows stay in OUTPUT/run (re-running resumes); a tuning split's in
OUTPUT/tune/<split>/. Benchmark images are read in their stored pixel order (no EXIF rotation),
the order their labels were drawn in. Datasets: see dsseg.evaluation.datasets.DATASETS.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dsseg.checks import needs_image_classes
from dsseg.cli import CAPTIONER_HELP, add_model_arguments, batch_size_value, plain
from dsseg.evaluation.datasets import DATASETS, Dataset, DatasetRootError, RegionAnnotations, load_dataset
from dsseg.evaluation.metrics import json_ready
from dsseg.evaluation.plan import Plan, make_plan
from dsseg.evaluation.presets import frame_text, list_presets, matching_presets
from dsseg.evaluation.report import (
    ConfigReport,
    Panel,
    ground_truth_panel,
    html_report,
    markdown_report,
    segmentation_panel,
)
from dsseg.evaluation.scoring import FRAMES, ModelFrame, evaluate_parts, to_model_frame
from dsseg.io.images import decode_image
from dsseg.io.masks import decode_segments
from dsseg.io.results import part_uris, read_results
from dsseg.io.sources import read_bytes
from dsseg.job.config import SegmentJob
from dsseg.job.runner import init_ray, library_versions, run_segment_job
from dsseg.spec import MethodSpec


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset", help="a published table row to reproduce (see --list-presets); fixes every setting below it"
    )
    parser.add_argument(
        "--list-presets", action="store_true", help="print every preset's row, paper, dataset and settings, then exit"
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="the benchmark reader (a preset names its own)")
    parser.add_argument("--root", help="the dataset's folder (or, for --dataset manifest, the manifest file)")
    parser.add_argument("--output", help="results folder (re-running resumes the segment rows)")
    parser.add_argument("--split", help="dataset split (the preset's, else each reader's default)")
    parser.add_argument("--classes", help="class names for --dataset manifest, comma-separated, in label order")
    parser.add_argument("--methods", help="comma-separated methods, each with its paper's defaults (default diffseg)")
    parser.add_argument("--config", help="YAML run file whose `configs:` list gives the method configs (sweeps)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="parameter for every config")
    parser.add_argument(
        "--frame", choices=FRAMES, help="model: the 512² model frame (DiffSeg protocol); label: the ground truth's size"
    )
    parser.add_argument(
        "--score-size",
        type=int,
        metavar="N",
        help="score the model frame on a grid of longer side N, prediction and ground truth sampled by PyTorch's "
        "nearest resize (DiffCut's eval_diffcut.py: 128 for its 1024² input); default: the preset's, else the frame's pixels",
    )
    parser.add_argument(
        "--class-filter",
        help="narrow each image's candidate classes (openvocab): clip:MODEL, caption, caption+clip:MODEL, "
        "package.module:factory, or none",
    )
    parser.add_argument(
        "--candidates",
        metavar="FILE",
        help="per-image candidate classes from a file (openvocab): DiffSegmenter's released lists (the "
        "diffsegmenter-* presets need them) or your own .json/.jsonl/.parquet of image id → names",
    )
    parser.add_argument("--captioner", help=CAPTIONER_HELP + " (default: the preset's)")
    parser.add_argument(
        "--tune-on",
        metavar="SPLIT",
        help="choose openvocab's background threshold on this split (never the evaluated one); with a preset "
        "whose threshold is an oracle one, the held-out number is reported beside it",
    )
    parser.add_argument("--tune-limit", type=int, help="use only the first N images of the tuning split")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument(
        "--batch-size", type=batch_size_value, default=4, help="images per model call, or auto (default %(default)s)"
    )
    parser.add_argument("--num-workers", type=int, default=1, help="model actors (and scoring actors)")
    parser.add_argument(
        "--report-images",
        type=int,
        default=2,
        help="best, worst and random images each in report.html (default %(default)s)",
    )
    add_model_arguments(parser, backbone_default=None, note=", or the preset's")
    args = parser.parse_args(argv)
    if not args.list_presets:
        missing = [flag for flag, value in (("--root", args.root), ("--output", args.output)) if not value]
        if not args.preset and not args.dataset:
            missing.insert(0, "--dataset (or --preset)")
        if missing:
            parser.error(f"{' and '.join(missing)} required (--list-presets shows the presets)")
    return args


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
    args: argparse.Namespace,
    dataset: Dataset,
    configs: tuple[MethodSpec, ...],
    folder: Path,
    limit: int | None,
) -> SegmentJob:
    """The segment job over ``dataset``'s first ``limit`` images into ``folder``/run (its settings
    validated here, before any model runs): stored pixel order, masks in the scoring frame."""
    manifest = write_manifest(dataset, configs, folder / "manifest.parquet", limit)
    return SegmentJob(
        input=str(manifest), output=str(folder / "run"), configs=configs, backbone=plan.backbone, device=args.device,
        dtype=args.dtype, offline=args.offline, compile=args.compile, batch_size=args.batch_size, num_workers=args.num_workers,
        retry_errors=True, exif_transpose=False, mask_frame="model" if plan.frame == "model" else "original",
        class_filter=plan.class_filter, captioner=plan.captioner,
    )  # fmt: skip


def segment_and_score(
    plan: Plan, args: argparse.Namespace, job: SegmentJob, options: dict[str, Any], limit: int | None
) -> tuple[dict[str, Any], dict[str, Any], pa.Table]:
    """Run (or resume) ``job`` and score its rows: (segment summary, {config_id: ConfigScores},
    per-image records)."""
    summary = run_segment_job(job)
    init_ray()
    start = time.perf_counter()
    parts = part_uris(job.output, job.config_ids())  # this run's configs only: the folder may hold earlier sweeps
    totals, records = evaluate_parts(
        parts, plan.dataset, args.root, options, plan.frame, model_frame(job, plan.score_size), args.num_workers, limit
    )
    summary["scoring_seconds"] = round(time.perf_counter() - start, 2)
    return summary, totals, records


def model_frame(job: SegmentJob, score_size: int | None = None) -> ModelFrame:
    return ModelFrame(job.preparation.image_size, job.preparation.geometry, score_size)


def tune(plan: Plan, args: argparse.Namespace, output: Path) -> dict[int, dict[str, Any]]:
    """Choose each tuned parameter on its tuning split: every grid value is a config sharing one
    forward; the best score wins (ties: the lower value). Returns config index → record. An oracle
    tuning sweeps the evaluated images themselves, into OUTPUT/run, so the evaluation that follows
    finds the chosen config's rows already written."""
    chosen: dict[int, dict[str, Any]] = {}
    for split, oracle in sorted({(t.split, t.oracle) for t in plan.tunings.values()}):
        indices = [i for i, t in plan.tunings.items() if (t.split, t.oracle) == (split, oracle)]
        options = {**plan.options, "split": split} if split else dict(plan.options)
        dataset = load_dataset(plan.dataset, args.root, **options)
        sweep = {
            (i, value): MethodSpec(plan.configs[i].method, {**plan.configs[i].params, plan.tunings[i].param: value})
            for i in indices
            for value in plan.tunings[i].values
        }
        unique = unique_specs(sweep.values())
        folder, limit = (output, args.limit) if oracle else (output / "tune" / split, args.tune_limit)
        job = build_job(plan, args, dataset, unique, folder, limit)
        summary, totals, _ = segment_and_score(plan, args, job, options, limit)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_presets:
        print(list_presets())
        return 0
    try:
        return evaluate(args)
    except (
        DatasetRootError,
        ValueError,
        TypeError,
        RuntimeError,
    ) as error:  # RuntimeError: a missing model or class filter
        print(f"error: {error}", file=sys.stderr)
        return 2


def evaluate(args: argparse.Namespace) -> int:
    """The evaluation run of ``main`` (errors a user can act on raise; ``main`` prints them)."""
    output = Path(args.output)
    plan = make_plan(args)
    dataset = load_dataset(plan.dataset, args.root, **plan.options)
    classes = list(plan.options.get("class_names", ())) or None
    claim_output(
        output,
        {
            "dataset": plan.dataset,
            "root": str(Path(args.root).resolve()),
            "split": plan.options.get("split"),
            "classes": classes,
        },
    )
    build_job(
        plan, args, dataset, unique_specs(plan.configs), output, args.limit
    )  # settings checked before any model runs
    tuned = tune(plan, args, output) if plan.tunings else {}
    configs = tuple(
        MethodSpec(spec.method, {**spec.params, tuned[i]["param"]: tuned[i]["value"]}) if i in tuned else spec
        for i, spec in enumerate(plan.configs)
    )
    unique = unique_specs(configs)  # an oracle and a held-out threshold may coincide
    job = build_job(plan, args, dataset, unique, output, args.limit)
    segment_summary, totals, records = segment_and_score(plan, args, job, plan.options, args.limit)
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
        name = plan.preset.name if plan.preset and not args.param else display_name(spec)
        if i in tuned and len(plan.tunings) > 1:
            name += " (oracle threshold)" if tuned[i]["oracle"] else f" (threshold chosen on {tuned[i]['split']})"
        reports.append(ConfigReport(cid, name, spec.method, results, tuple(matches), notes))
    metrics = {
        "dataset": plan.dataset,
        "root": str(args.root),
        "split": plan.options.get("split"),
        "frame": plan.frame,
        "score_size": plan.score_size,
        "backbone": plan.backbone,
        "preset": plan.preset.name if plan.preset else None,
        "images": len(dataset.samples(args.limit)),
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
    (output / "report.md").write_text(
        markdown_report(plan.dataset, frame_text(plan.frame, plan.score_size), reports, plan.backbone)
    )
    key = "miou" if dataset.class_names else "covering"  # region benchmarks (BSDS500) have no classes
    picks = pick_report_images(records, config_ids[0], args.report_images, key)
    html_report(
        output / "report.html",
        f"dsseg evaluation: {plan.dataset}",
        report_rows(dataset, job, plan.frame, reports, picks),
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


if __name__ == "__main__":
    sys.exit(main())
