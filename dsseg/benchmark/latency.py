"""Per-stage latency and memory of the segmentation path (``dsseg benchmark``, ``jobs/benchmark.py``).

Stages: decode (file bytes → prepared 512² input), encode (VAE), invert (noise or DDIM
inversion), unet (one step with capture), aggregate, segment, upsample (labels to the original
size), rle, and caption (BLIP, with ``--captioner`` for configs that read captions). For each batch size: the median over the repeats (after one warm-up) of
milliseconds per image for each stage, end-to-end images/s, and peak host and device memory.
The comparison mode times every stage that has a straightforward second version against ours on
the same input, with the speed-up and how far the results are apart (``dsseg.benchmark.comparisons``):
the UNet step with every per-head map kept (and its peak device memory on CUDA), float64
aggregation, full-size upsampling, per-mask RLE; and the method's aggregation + segmentation
against its float64 transcription — for DiffSeg the loop-by-loop official algorithm
(``tests/oracles/diffseg_reference.py``), for NCut dense matrices, scipy's eigensolver and costs
from the definition (``tests/oracles/ncut_reference.py``), agreement of the label maps (NCut:
latent-cell partitions). The transcriptions are the tests' oracles: the comparison mode runs from a
source checkout (``dsseg.benchmark.checkout``). Class counts time the open-vocabulary method (or segment naming)
against the number of candidate classes: one UNet call per ``class_batch_size`` class prompts.
"""

from __future__ import annotations

import dataclasses
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dsseg.benchmark.checkout import load_oracle
from dsseg.benchmark.comparisons import (
    SAME_CODE_STAGES,
    aggregation_levels,
    compare_aggregate,
    compare_capture,
    compare_rle,
    compare_upsample,
)
from dsseg.benchmark.image import NAME as IMAGE_NAME
from dsseg.benchmark.image import synthetic_jpeg
from dsseg.evaluation.metrics import relabelled_agreement
from dsseg.io.frames import labels_to_original
from dsseg.io.images import decode_image
from dsseg.io.schema import TIMING_STAGES
from dsseg.job.memory import probe_batch_size
from dsseg.job.runner import library_versions
from dsseg.methods.aggregate import aggregate_self_attention
from dsseg.methods.diffseg import DiffSegConfig, segment_diffseg
from dsseg.methods.ncut import NCutConfig, ncut_levels, ncut_partition, segment_ncut
from dsseg.model.backbone import load_backbone
from dsseg.model.extract import AttentionBundle, to_model_input
from dsseg.model.vocabularies import COCO80
from dsseg.segmenter import Segmenter, name_segments, run_config
from dsseg.settings import ModelSettings
from dsseg.spec import MethodSpec
from dsseg.timing import StageTimer


def run_once(segmenter: Segmenter, data: bytes, batch_size: int) -> dict[str, float]:
    """One pass over a batch of copies of the image; milliseconds per image by stage."""
    timer = StageTimer(segmenter.backbone.device)
    with timer.stage("decode"):
        batch = segmenter.batch([decode_image(data, max_pixels=None)[0] for _ in range(batch_size)])
    (segmentations,) = segmenter.segment(batch, timer=timer)
    with timer.stage("rle"):
        for segmentation in segmentations:
            segmentation.to_rles()
    ms = {**segmentations[0].timings_ms, "rle": timer.ms["rle"]}  # every stage of the batch, then the RLEs
    return {stage: ms[stage] / batch_size for stage in TIMING_STAGES if stage in ms}


def compare_with_reference(segmenter: Segmenter, data: bytes) -> dict:
    """Every stage with a second, straightforward version (``dsseg.benchmark.comparisons``), and the method's
    aggregation + segmentation against its float64 transcription, on one image: times, speed-ups,
    agreement; the stages computed by the same library calls either way are named."""
    backbone, method, extractor = segmenter.backbone, segmenter.config.method, segmenter.groups[0].extractor
    batch = segmenter.batch([decode_image(data, max_pixels=None)[0]])
    images = to_model_input(batch.pixels, backbone.device, backbone.dtype)
    bundle, _ = segmenter.forward(batch, model_input=images)
    config = segmenter.config.params
    stages = [compare_capture(extractor, images).record()]
    stages.append(
        compare_aggregate(bundle.self_attention, *aggregation_levels(method, config, bundle.self_attention)).record()
    )
    compare_method = {"diffseg": compare_diffseg, "ncut": compare_ncut}.get(method)
    if compare_method is not None:
        stages.append(compare_method(bundle, config))
    result = name_segments(segmenter.config, bundle, run_config(segmenter.config, bundle))[0]
    geometry = batch.geometries[0]
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
    reference_diffseg = load_oracle("diffseg_reference").reference_diffseg
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
    reference_aggregate = load_oracle("diffseg_reference").reference_aggregate
    reference_ncut = load_oracle("ncut_reference").reference_ncut
    start = time.perf_counter()
    aggregated = reference_aggregate(attention, config.resolution_weights)
    reference = reference_ncut(aggregated.reshape(len(ours), len(ours)), config)
    reference_ms = (time.perf_counter() - start) * 1000.0
    return comparison_record("aggregate+segment (NCut)", ours_ms, reference_ms, ours, reference)


def versus_method(segmenter: Segmenter, data: bytes, other: str, repeats: int) -> dict:
    """The benchmark's method and ``other`` (defaults) on the same attention of one image (the
    benchmark method's forward): aggregate + segment milliseconds of each, runs interleaved after a
    warm-up (so that drifts of the machine hit both alike), medians and the ratio of the medians."""
    bundle, _ = segmenter.forward(segmenter.batch([decode_image(data, max_pixels=None)[0]]))
    configs = {segmenter.config.method: segmenter.config, other: MethodSpec(other).resolved}
    ms: dict[str, list[float]] = {name: [] for name in configs}
    segments = {}
    for repeat in range(repeats + 1):
        for name, config in configs.items():
            timer = StageTimer(segmenter.backbone.device)
            (result,) = run_config(config, bundle, timer)  # no memo: each run computes afresh
            if repeat:
                ms[name].append(timer.ms["aggregate"] + timer.ms["segment"])
            segments[name] = int(result.labels.unique().numel())
    medians = {name: statistics.median(values) for name, values in ms.items()}
    return {
        "methods": list(configs),
        "median_ms": {name: round(value, 1) for name, value in medians.items()},
        "segments": segments,
        "ratio": round(medians[segmenter.config.method] / medians[other], 2),
        "torch_threads": torch.get_num_threads(),
    }


def timed_runs(
    segmenter: Segmenter, data: bytes, batch_sizes: list[int | str], repeats: int, classes: int | None = None
) -> list[dict]:
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
                "peak_device_memory_mb_per_image": round(
                    (torch.cuda.max_memory_allocated() - resident) / 2**20 / batch_size, 1
                )
                if cuda
                else None,
                "auto_batch_probe": probe,
            }
        )
    return runs


@dataclass(frozen=True, kw_only=True)
class LatencyRequest(ModelSettings):
    """What ``dsseg benchmark`` times: ``method`` with ``params`` on ``backbone`` over ``image``
    (a file path; None: a synthetic BSDS500-sized JPEG drawn in process), per batch size (ints or "auto"), each timed ``repeats`` times after a warm-up;
    ``class_counts``: also per number of candidate classes; ``compare``: each stage against its
    straightforward version; ``full_forward``: capturing forwards run to their end instead of stopping
    after the last module read (``dsseg.model.early_stop``), to measure what the early stop saves;
    ``versus``: another method's aggregate + segment on the same attention (``versus_method``)."""

    image: str | None = None
    method: str = "diffseg"
    params: dict = field(default_factory=dict)
    batch_sizes: tuple[int | str, ...] = (1,)
    repeats: int = 3
    compare: bool = False
    class_counts: tuple[int, ...] = ()
    captioner: str | None = None
    full_forward: bool = False
    versus: str | None = None


def full_forward(segmenter: Segmenter, args: LatencyRequest) -> Segmenter:
    """``segmenter``, its capturing forwards run to their end when ``args.full_forward``."""
    for group in segmenter.groups:
        group.extractor.early_stop = not args.full_forward
    return segmenter


def benchmark(args: LatencyRequest) -> dict:
    """The report ``dsseg benchmark`` prints: the settings, per-run stage milliseconds per image,
    throughput and memory, and the comparison (``compare``)."""
    start = time.perf_counter()
    backbone = load_backbone(
        args.backbone, device=args.device, dtype=args.dtype, offline=args.offline, compile=args.compile
    )
    captioner = None
    if args.captioner:
        from dsseg.model.captioner import load_captioner

        captioner = load_captioner(args.captioner, device=backbone.device, dtype=backbone.dtype, offline=args.offline)
    load_seconds = time.perf_counter() - start
    params = dict(args.params)
    segmenter = full_forward(Segmenter(backbone, MethodSpec(args.method, params), captioner=captioner), args)
    data = synthetic_jpeg() if args.image is None else Path(args.image).read_bytes()
    comparison = None
    if args.compare:
        comparison = compare_with_reference(segmenter, data)
    versus = versus_method(segmenter, data, args.versus, args.repeats) if args.versus else None
    if args.class_counts:
        # Cost against the number of candidate classes: the first N of the configured list.
        names = segmenter.config.extraction.prompting.classes or COCO80
        params = {k: v for k, v in params.items() if k not in ("classes", "vocabulary")}
        runs = []
        for count in args.class_counts:
            spec = MethodSpec(args.method, params | {"classes": tuple(names[:count])})
            counted = full_forward(Segmenter(backbone, spec, captioner=captioner), args)
            runs.extend(timed_runs(counted, data, args.batch_sizes, args.repeats, classes=count))
    else:
        runs = timed_runs(
            segmenter,
            data,
            args.batch_sizes,
            args.repeats,
            classes=len(segmenter.config.extraction.prompting.classes) or None,
        )
    return {
        "backbone": args.backbone,
        "captioner": args.captioner,
        "device": str(backbone.device),
        "device_name": torch.cuda.get_device_name()
        if backbone.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": str(backbone.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "method": args.method,
        "method_config": dataclasses.asdict(segmenter.config.params),
        "extract_config": segmenter.config.flat_extraction(),
        "image": IMAGE_NAME if args.image is None else str(args.image),
        "repeats": args.repeats,
        "full_forward": args.full_forward,
        "backbone_load_seconds": round(load_seconds, 2),
        "peak_host_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": library_versions(),
        "runs": runs,
        "comparison": comparison,
        "versus": versus,
    }


def side_by_side(reports: list[dict]) -> dict:
    """Reports of one benchmark in several precisions → ``{"dtypes", "reports", "speedup"}``: per
    batch size, each precision's end-to-end speed-up over the first's (ms of the first / ms of it)."""
    first = reports[0]
    speedup = {}
    for report in reports[1:]:
        speedup[report["dtype"]] = [
            {
                "batch_size": run["batch_size"],
                "classes": run["classes"],
                "end_to_end": round(base["end_to_end_ms_per_image"] / run["end_to_end_ms_per_image"], 2),
                "stages": {
                    stage: round(base["ms_per_image"][stage] / ms, 2)
                    for stage, ms in run["ms_per_image"].items()
                    if ms and base["ms_per_image"].get(stage)
                },
            }
            for base, run in zip(first["runs"], report["runs"])
        ]
    return {
        "dtypes": [report["dtype"] for report in reports],
        "reports": reports,
        "speedup_over_" + first["dtype"]: speedup,
    }


def print_table(report: dict) -> None:
    header = (
        f"{'batch':>5} {'classes':>7} "
        + " ".join(f"{stage:>9}" for stage in TIMING_STAGES)
        + f" {'total':>9} {'img/s':>7}"
    )
    print(
        f"{report['backbone']} on {report['device']} ({report['dtype']}), ms per image (median of {report['repeats']})",
        file=sys.stderr,
    )
    print(header, file=sys.stderr)
    for run in report["runs"]:
        shown = {stage: run["ms_per_image"].get(stage) for stage in TIMING_STAGES}
        cells = " ".join(f"{'-':>9}" if ms is None or ms != ms else f"{ms:9.1f}" for ms in shown.values())
        classes = "-" if run["classes"] is None else run["classes"]
        print(
            f"{run['batch_size']:>5} {classes:>7} {cells} {run['end_to_end_ms_per_image']:9.1f} {run['end_to_end_images_per_second']:7.2f}",
            file=sys.stderr,
        )


def print_comparison(comparison: dict) -> None:
    print(f"{'stage':<28} {'ours ms':>9} {'plain ms':>10} {'speed-up':>8}  straightforward version", file=sys.stderr)
    for record in comparison["stages"]:
        plain = record.get("straightforward", "float64 transcription of the method")
        print(
            f"{record['stage']:<28} {record['ours_ms']:9.1f} {record['straightforward_ms']:10.1f} {record['speedup']:8.1f}  {plain}",
            file=sys.stderr,
        )
    print(f"same library calls either way: {', '.join(comparison['same_code_stages'])}", file=sys.stderr)
