"""Per-stage latency of the segmentation path, printed as JSON (and a table on stderr).

    python jobs/benchmark.py --backbone tiny|sd-v1-random|HUB_ID --device cpu|cuda
                             [--batch-sizes 1,4,auto] [--repeats 3] [--image PATH] [--json OUT.json]
                             [--method diffseg] [--param NAME=VALUE ...] [--noise ...]
                             [--method openvocab --class-counts 1,5,20,80]

Stages: decode (file bytes → prepared 512² input), encode (VAE), invert (noise or DDIM
inversion), unet (one step with capture), aggregate, segment, upsample (labels to the original
size), rle. For each batch size: the median over ``--repeats`` runs (after one warm-up) of
milliseconds per image for each stage, end-to-end images/s, and peak host and device memory.
``--compare`` times every stage that has a straightforward second version against ours on the
same input, with the speed-up and how far the results are apart (``dsseg.benchmark.comparisons``): the
UNet step with every per-head map kept (and its peak device memory on CUDA), float64
aggregation, full-size upsampling, per-mask RLE; and the method's aggregation + segmentation
against its float64 transcription — for DiffSeg the loop-by-loop official algorithm
(``dsseg.methods.diffseg_reference``), for NCut dense matrices, scipy's eigensolver and costs
from the definition (``dsseg.methods.ncut_reference``), agreement of the label maps (NCut:
latent-cell partitions).
``--class-counts`` times the open-vocabulary method (or segment naming) against the number of
candidate classes: one UNet call per ``class_batch_size`` class prompts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dsseg.api import Segmenter, split_params  # noqa: E402
from dsseg.benchmark.comparisons import SAME_CODE_STAGES, compare_aggregate, compare_capture, compare_rle, compare_upsample  # noqa: E402
from dsseg.model.backbone import load_backbone  # noqa: E402
from dsseg.cli import add_method_arguments, add_model_arguments, batch_size_value, params_from_args  # noqa: E402
from dsseg.io.images import decode_image, to_model_input  # noqa: E402
from dsseg.methods.aggregate import aggregate_self_attention  # noqa: E402
from dsseg.model.extract import AttentionBundle  # noqa: E402
from dsseg.methods import run_method  # noqa: E402
from dsseg.methods.diffseg import DiffSegConfig, segment_diffseg  # noqa: E402
from dsseg.methods.diffseg_reference import reference_aggregate, reference_diffseg  # noqa: E402
from dsseg.methods.ncut import NCutConfig, ncut_levels, ncut_partition, segment_ncut  # noqa: E402
from dsseg.methods.ncut_reference import reference_ncut  # noqa: E402
from dsseg.job.memory import probe_batch_size  # noqa: E402
from dsseg.evaluation.metrics import relabelled_agreement  # noqa: E402
from dsseg.job.runner import library_versions  # noqa: E402
from dsseg.io.schema import TIMING_STAGES  # noqa: E402
from dsseg.timing import StageTimer  # noqa: E402
from dsseg.methods.upsample import labels_to_original  # noqa: E402
from dsseg.model.vocabularies import COCO80  # noqa: E402

DEFAULT_IMAGE = Path(__file__).resolve().parents[1] / "tests" / "data" / "images" / "135069.jpg"


def run_once(segmenter: Segmenter, data: bytes, batch_size: int) -> dict[str, float]:
    """One pass over a batch of copies of the image; milliseconds per image by stage."""
    timer = StageTimer(segmenter.backbone.device)
    with timer.stage("decode"):
        prepared = [segmenter.prepare(np.asarray(decode_image(data))) for _ in range(batch_size)]
    segmentations = segmenter(np.stack([p for p, _ in prepared]), [g for _, g in prepared], timer)
    with timer.stage("rle"):
        for segmentation in segmentations:
            segmentation.to_rles()
    return {stage: timer.ms[stage] / batch_size for stage in TIMING_STAGES if stage in timer.ms}


def compare_with_reference(segmenter: Segmenter, data: bytes) -> dict:
    """Every stage with a second, straightforward version (``dsseg.benchmark.comparisons``), and the method's
    aggregation + segmentation against its float64 transcription, on one image: times, speed-ups,
    agreement; the stages computed by the same library calls either way are named."""
    backbone = segmenter.backbone
    pixels, geometry = segmenter.prepare(np.asarray(decode_image(data)))
    images = to_model_input(pixels[None], backbone.device, backbone.dtype)
    bundle = segmenter.extractor(images)
    config = segmenter.method_config
    levels = ncut_levels(list(bundle.self_attention), config) if segmenter.method.name == "ncut" else getattr(config, "resolutions", None)
    stages = [compare_capture(segmenter.extractor, images).record()]
    stages.append(compare_aggregate(bundle.self_attention, levels, getattr(config, "resolution_weights", None)).record())
    compare_method = {"diffseg": compare_diffseg, "ncut": compare_ncut}.get(segmenter.method.name)
    if compare_method is not None:
        stages.append(compare_method(bundle, config))
    result = run_method(segmenter.method, bundle, config)[0]
    stages.append(compare_upsample(result.labels.cpu().numpy(), geometry).record())
    stages.append(compare_rle(labels_to_original(result.labels.cpu().numpy(), geometry)).record())
    return {"stages": stages, "same_code_stages": list(SAME_CODE_STAGES)}


def timed_ours(segment, bundle: AttentionBundle, config) -> float:
    """Milliseconds of aggregate + segment for one image (after a warm-up run)."""
    segment(bundle, config)
    timer = StageTimer(next(iter(bundle.self_attention.values())).device)
    segment(bundle, config, timer)
    return timer.ms["aggregate"] + timer.ms["segment"]


def comparison_record(stage: str, ours_ms: float, reference_ms: float, ours: np.ndarray, reference: np.ndarray) -> dict:
    return {
        "stage": stage,
        "ours_ms": round(ours_ms, 1),
        "straightforward_ms": round(reference_ms, 1),
        "speedup": round(reference_ms / ours_ms, 1),
        "segments": [int(ours.max()) + 1, int(reference.max()) + 1],
        "agreement": round(relabelled_agreement(ours, reference), 5),
    }


def compare_diffseg(bundle: AttentionBundle, config: DiffSegConfig) -> dict:
    """DiffSeg: ours (float32 torch, KL by matrix products) against the float64 loop-by-loop
    transcription of the official algorithm; agreement of the pixel label maps."""
    ours_ms = timed_ours(segment_diffseg, bundle, config)
    ours = segment_diffseg(bundle, config)[0].labels.cpu().numpy()
    attention = {grid[0]: maps[0].cpu().numpy() for grid, maps in bundle.self_attention.items()}
    start = time.perf_counter()
    reference = reference_diffseg(
        attention,
        kl_threshold=config.kl_threshold,
        iterations=config.iterations,
        num_points=bundle.latent_hw[0] // config.anchor_spacing,
        upsample_factor=config.upsample_factor,
    )
    reference_ms = (time.perf_counter() - start) * 1000.0
    return comparison_record("aggregate+segment (DiffSeg)", ours_ms, reference_ms, ours, reference)


def compare_ncut(bundle: AttentionBundle, config: NCutConfig) -> dict:
    """Recursive NCut: ours (float32 torch, matrix-free Lanczos, prefix-sum split costs) against
    dense float64 adjacency, scipy's generalised eigensolver and split costs summed from the
    definition; agreement of the latent-cell partitions."""
    ours_ms = timed_ours(segment_ncut, bundle, config)
    levels = ncut_levels(list(bundle.self_attention), config)
    transition = aggregate_self_attention(bundle.self_attention, levels, config.resolution_weights)[0][0]
    ours = ncut_partition(transition, config).assignment.cpu().numpy()
    attention = {grid[0]: maps[0].cpu().numpy() for grid, maps in bundle.self_attention.items() if grid[0] in levels}
    start = time.perf_counter()
    aggregated = reference_aggregate(attention, config.resolution_weights)
    reference = reference_ncut(aggregated.reshape(len(ours), len(ours)), config)
    reference_ms = (time.perf_counter() - start) * 1000.0
    return comparison_record("aggregate+segment (NCut)", ours_ms, reference_ms, ours, reference)


def timed_runs(segmenter: Segmenter, data: bytes, batch_sizes: list[int | str], repeats: int, classes: int | None = None) -> list[dict]:
    """One record per batch size ("auto": chosen from free memory by ``dsseg.job.memory``): median
    per-stage ms per image, images/s and peak device memory (whole batch and per image)."""
    cuda = segmenter.backbone.device.type == "cuda"
    runs = []
    for batch_size in batch_sizes:
        probe = None
        if batch_size == "auto":
            probe = probe_batch_size(lambda n: run_once(segmenter, data, n), segmenter.backbone.device)
            batch_size = probe["batch_size"]
        resident = torch.cuda.memory_allocated() if cuda else 0  # the model's weights and caches
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        run_once(segmenter, data, batch_size)  # warm-up
        samples = [run_once(segmenter, data, batch_size) for _ in range(repeats)]
        stages = {stage: statistics.median(s[stage] for s in samples) for stage in samples[0]}
        total = statistics.median(sum(s.values()) for s in samples)
        runs.append(
            {
                "batch_size": batch_size,
                "classes": classes,
                "ms_per_image": {k: round(v, 2) for k, v in stages.items()},
                "images_per_second": {k: round(1000.0 / v, 2) for k, v in stages.items()},
                "end_to_end_ms_per_image": round(total, 2),
                "end_to_end_images_per_second": round(1000.0 / total, 3),
                "peak_device_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
                "peak_device_memory_mb_per_image": round((torch.cuda.max_memory_allocated() - resident) / 2**20 / batch_size, 1) if cuda else None,
                "auto_batch_probe": probe,
            }
        )
    return runs


def benchmark(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    backbone = load_backbone(args.backbone, device=args.device, dtype=args.dtype, offline=args.offline, compile=args.compile)
    load_seconds = time.perf_counter() - start
    params = params_from_args(args)
    segmenter = Segmenter(backbone, args.method, params)
    data = Path(args.image).read_bytes()
    comparison = None
    if args.compare:
        if segmenter.extract_config.geometry == "aspect":
            raise SystemExit("--compare needs square inputs (geometry center_crop or squash)")
        comparison = compare_with_reference(segmenter, data)
    if args.class_counts:
        # Cost against the number of candidate classes: the first N of the configured list.
        names = segmenter.extract_config.classes or COCO80
        params = {k: v for k, v in params.items() if k not in ("classes", "vocabulary")}
        runs = []
        for count in args.class_counts:
            counted = Segmenter(backbone, args.method, params | {"classes": tuple(names[:count])})
            runs.extend(timed_runs(counted, data, args.batch_sizes, args.repeats, classes=count))
    else:
        runs = timed_runs(segmenter, data, args.batch_sizes, args.repeats, classes=len(segmenter.extract_config.classes) or None)
    return {
        "backbone": args.backbone,
        "device": str(backbone.device),
        "device_name": torch.cuda.get_device_name() if backbone.device.type == "cuda" else platform.processor() or platform.machine(),
        "dtype": str(backbone.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "method": args.method,
        "method_config": dataclasses.asdict(segmenter.method_config),
        "extract_config": dataclasses.asdict(segmenter.extract_config),
        "image": str(args.image),
        "repeats": args.repeats,
        "backbone_load_seconds": round(load_seconds, 2),
        "peak_host_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": library_versions(),
        "runs": runs,
        "comparison": comparison,
    }


def print_table(report: dict) -> None:
    header = f"{'batch':>5} {'classes':>7} " + " ".join(f"{stage:>9}" for stage in TIMING_STAGES) + f" {'total':>9} {'img/s':>7}"
    print(f"{report['backbone']} on {report['device']} ({report['dtype']}), ms per image (median of {report['repeats']})", file=sys.stderr)
    print(header, file=sys.stderr)
    for run in report["runs"]:
        cells = " ".join(f"{run['ms_per_image'].get(stage, float('nan')):9.1f}" for stage in TIMING_STAGES)
        classes = "-" if run["classes"] is None else run["classes"]
        print(
            f"{run['batch_size']:>5} {classes:>7} {cells} {run['end_to_end_ms_per_image']:9.1f} {run['end_to_end_images_per_second']:7.2f}",
            file=sys.stderr,
        )


def print_comparison(comparison: dict) -> None:
    print(f"{'stage':<28} {'ours ms':>9} {'plain ms':>10} {'speed-up':>8}  straightforward version", file=sys.stderr)
    for record in comparison["stages"]:
        plain = record.get("straightforward", "float64 transcription of the method")
        print(f"{record['stage']:<28} {record['ours_ms']:9.1f} {record['straightforward_ms']:10.1f} {record['speedup']:8.1f}  {plain}", file=sys.stderr)
    print(f"same library calls either way: {', '.join(comparison['same_code_stages'])}", file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(DEFAULT_IMAGE), help="image to segment (default: a BSDS500 test image)")
    parser.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes, auto = fit free memory (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch size after one warm-up")
    parser.add_argument("--json", help="also write the report to this file")
    parser.add_argument("--compare", action="store_true", help="also time the method's float64 straightforward version (slow)")
    parser.add_argument(
        "--class-counts", help="comma-separated numbers of candidate classes to time (the first N of --classes/--vocabulary, else COCO-80)"
    )
    add_model_arguments(parser)
    add_method_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [batch_size_value(b.strip()) for b in args.batch_sizes.split(",")]
        args.class_counts = [int(n) for n in args.class_counts.split(",")] if args.class_counts else []
        if args.class_counts and min(args.class_counts) < 1:
            raise ValueError("--class-counts must be ≥ 1")
        split_params(args.method, params_from_args(args))
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        parser.error(str(error))
    if args.repeats < 1:
        parser.error("--repeats must be ≥ 1")
    report = benchmark(args)
    print_table(report)
    if report["comparison"]:
        print_comparison(report["comparison"])
    text = json.dumps(report, indent=2, default=str)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
