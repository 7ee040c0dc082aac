"""Benchmark evaluation on Ray: segment a dataset's images with one or more method configs (the
segment job, resumable), score every row against the ground truth in an actor pool, sum the
per-image statistics per config, and write the results.

    python jobs/evaluate.py --dataset cocostuff27 --root /data/cocostuff --output out/eval \\
        [--methods diffseg,ncut | --config sweep.yaml] [--limit N] [--geometry crop|full] \\
        [--backbone tiny|HUB_ID|DIR] [--param NAME=VALUE ...] [--batch-size 4] [--num-workers 1]

Writes OUTPUT/metrics.json (every protocol for every config), OUTPUT/per_image.parquet (one
record per image × config, for slicing), OUTPUT/report.md (tables laid out like the papers',
the published number beside ours) and OUTPUT/report.html (+ report_files/: best, worst and
random images with the ground truth and each config's segments). The segment rows stay in
OUTPUT/run (re-running resumes). Datasets: see ``dsseg.datasets.DATASETS``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from dsseg.cli import add_model_arguments, batch_size_value, parse_param_values  # noqa: E402
from dsseg.datasets import DATASETS, Dataset, DatasetRootError, load_dataset  # noqa: E402
from dsseg.datasets.regions import BSDS500  # noqa: E402
from dsseg.evaluation import GEOMETRIES, evaluate_parts  # noqa: E402
from dsseg.image import decode_rgb  # noqa: E402
from dsseg.jobconfig import MethodSpec, SegmentJob, load_run_file  # noqa: E402
from dsseg.masks import decode_segments  # noqa: E402
from dsseg.metrics import json_ready  # noqa: E402
from dsseg.pipeline import init_ray, library_versions, run_segment_job  # noqa: E402
from dsseg.report import ConfigReport, Panel, ground_truth_panel, html_report, markdown_report, segmentation_panel  # noqa: E402
from dsseg.results import part_uris, read_results  # noqa: E402
from dsseg.sources import read_bytes  # noqa: E402

# The DiffSeg protocol (centre crop, 512²) for the datasets its papers report; full size elsewhere.
CROP_DATASETS = ("cocostuff27", "cityscapes27")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--root", required=True, help="the dataset's folder (or, for --dataset manifest, the manifest file)")
    parser.add_argument("--output", required=True, help="results folder (re-running resumes the segment rows)")
    parser.add_argument("--split", help="dataset split (each reader's default otherwise)")
    parser.add_argument("--classes", help="class names for --dataset manifest, comma-separated, in label order")
    parser.add_argument("--methods", default="diffseg", help="comma-separated methods, each with its paper's defaults (default %(default)s)")
    parser.add_argument("--config", help="YAML run file whose `configs:` list gives the method configs (sweeps)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="parameter for every --methods config")
    parser.add_argument("--geometry", choices=GEOMETRIES, help="crop: centre square at 512² (DiffSeg protocol); full: the ground truth's size")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--batch-size", type=batch_size_value, default=4, help="images per model call, or auto (default %(default)s)")
    parser.add_argument("--num-workers", type=int, default=1, help="model actors (and scoring actors)")
    parser.add_argument("--report-images", type=int, default=2, help="best, worst and random images each in report.html (default %(default)s)")
    add_model_arguments(parser)
    return parser.parse_args(argv)


def method_specs(args: argparse.Namespace, geometry: str) -> tuple[MethodSpec, ...]:
    """The run's method configs. Scoring at full size (``geometry`` "full") segments the whole
    image (extraction geometry ``aspect``) unless a config names its own extraction geometry."""
    if args.config:
        configs = load_run_file(args.config).get("configs")
        if not configs:
            raise ValueError(f"--config {args.config} has no `configs:` list")
    else:
        params = parse_param_values(args.param)
        configs = [MethodSpec(method.strip(), params) for method in args.methods.split(",") if method.strip()]
    if geometry == "full":
        configs = [spec if "geometry" in spec.params else MethodSpec(spec.method, {**spec.params, "geometry": "aspect"}) for spec in configs]
    return tuple(configs)


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
    if any(spec.configs()[0].class_template is not None and not spec.configs()[0].classes for spec in configs):
        names = [name for name in dataset.class_names if name != "background"]
        table = table.append_column("classes", pa.array([names] * len(table), pa.list_(pa.string())))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def pick_report_images(records: pa.Table, config_id: str, count: int, key: str) -> list[tuple[str, str]]:
    """(heading, image_id): the best, the worst and random images of one config by ``key``."""
    rows = [r for r in records.to_pylist() if r["config_id"] == config_id and r.get(key) is not None and not np.isnan(r[key])]
    rows.sort(key=lambda r: -r[key])
    chosen: list[tuple[str, str]] = []
    seen: set[str] = set()
    rest = rows[count:-count] if len(rows) > 2 * count else []
    for label, group in (("best", rows[:count]), ("worst", rows[::-1][:count]), ("random", random.Random(0).sample(rest, min(count, len(rest))))):
        for r in group:
            if r["image_id"] not in seen:
                seen.add(r["image_id"])
                chosen.append((f"{label}: {r['image_id']} ({key} {r[key]:.1f})", r["image_id"]))
    return chosen


def report_rows(dataset: Dataset, run: str, configs: list[ConfigReport], picks: list[tuple[str, str]]) -> list[tuple[str, list[Panel]]]:
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
        rgb = decode_rgb(read_bytes(sample.image))[0]
        gt = dataset.load_label(sample)
        panels = [Panel("image", rgb)]
        if isinstance(dataset, BSDS500):
            panels.append(segmentation_panel("annotator 1", rgb, gt, []))
        else:
            panels.append(ground_truth_panel(gt, dataset.class_names))
        for config in configs:
            row = by_key.get((config.config_id, image_id))
            if row is None or row["status"] != "ok":
                continue
            labels = decode_segments(row["segments"], (row["height"], row["width"]))
            names = [segment["label"] for segment in row["segments"]]
            panels.append(segmentation_panel(config.name, rgb, labels, names))
        out.append((heading, panels))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options: dict[str, Any] = {"split": args.split} if args.split else {}
    if args.dataset == "manifest":
        options = {"class_names": tuple(c.strip() for c in (args.classes or "").split(",") if c.strip())}
    geometry = args.geometry or ("crop" if args.dataset in CROP_DATASETS else "full")
    output = Path(args.output)
    try:
        dataset = load_dataset(args.dataset, args.root, **options)
        configs = method_specs(args, geometry)
        classes = list(options.get("class_names", ())) or None
        claim_output(output, {"dataset": args.dataset, "root": str(Path(args.root).resolve()), "split": args.split, "classes": classes})
        manifest = write_manifest(dataset, configs, output / "manifest.parquet", args.limit)
        job = SegmentJob(
            input=str(manifest), output=str(output / "run"), configs=configs, backbone=args.backbone, device=args.device,
            dtype=args.dtype, offline=args.offline, compile=args.compile, batch_size=args.batch_size, num_workers=args.num_workers,
            retry_errors=True,
        )  # fmt: skip
    except (DatasetRootError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    segment_summary = run_segment_job(job)
    init_ray()
    start = time.perf_counter()
    config_ids = job.config_ids()
    parts = part_uris(job.output, config_ids)  # this run's configs only: OUTPUT/run may hold earlier sweeps
    totals, records = evaluate_parts(parts, args.dataset, args.root, options, geometry, args.num_workers, args.limit)
    scoring_seconds = time.perf_counter() - start
    reports = [
        ConfigReport(cid, display_name(spec), spec.method, totals[cid].results() if cid in totals else {"images": 0})
        for cid, spec in zip(config_ids, configs)
    ]
    metrics = {
        "dataset": args.dataset,
        "root": str(args.root),
        "split": args.split,
        "geometry": geometry,
        "backbone": args.backbone,
        "images": len(dataset.samples(args.limit)),
        "configs": {r.config_id: {"name": r.name, "method": r.method, "params": dict(spec.params), **r.results} for r, spec in zip(reports, configs)},
        "segment_job": segment_summary,
        "scoring_seconds": round(scoring_seconds, 2),
        "versions": library_versions(),
    }
    (output / "metrics.json").write_text(json.dumps(json_ready(metrics), indent=2, default=str))
    pq.write_table(records, output / "per_image.parquet")
    (output / "report.md").write_text(markdown_report(args.dataset, geometry, reports))
    key = "covering" if isinstance(dataset, BSDS500) else "miou"
    picks = pick_report_images(records, config_ids[0], args.report_images, key)
    html_report(output / "report.html", f"dsseg evaluation: {args.dataset}", report_rows(dataset, job.output, reports, picks))
    print((output / "report.md").read_text())
    print(json.dumps({"metrics": str(output / "metrics.json"), "report": str(output / "report.html"), "complete": segment_summary["complete"]}))
    return 0 if segment_summary["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
