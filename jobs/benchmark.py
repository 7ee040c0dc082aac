"""Per-stage latency of the segmentation path, printed as JSON (and a table on stderr).

    python jobs/benchmark.py --backbone tiny|sd-v1-random|HUB_ID --device cpu|cuda
                             [--batch-sizes 1,4] [--repeats 3] [--image PATH] [--json OUT.json]
                             [--method diffseg] [--param NAME=VALUE ...] [--noise ...]

Stages: decode (file bytes → prepared 512² input), encode (VAE), invert (noise or DDIM
inversion), unet (one step with capture), aggregate, segment, upsample (labels to the original
size), rle. For each batch size: the median over ``--repeats`` runs (after one warm-up) of
milliseconds per image for each stage, end-to-end images/s, and peak host and device memory.
``--compare`` adds DiffSeg's aggregation + merging timed against the float64 loop-by-loop
transcription of the official algorithm (``dsseg.methods.diffseg_reference``) on the same
attention, with the speed-up and the pixel agreement of the two label maps.
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
from dsseg.backbone import load_backbone  # noqa: E402
from dsseg.cli import add_method_arguments, add_model_arguments, params_from_args  # noqa: E402
from dsseg.image import decode_image, to_model_input  # noqa: E402
from dsseg.methods.diffseg import segment_diffseg  # noqa: E402
from dsseg.methods.diffseg_reference import reference_diffseg  # noqa: E402
from dsseg.metrics import relabelled_agreement  # noqa: E402
from dsseg.pipeline import library_versions  # noqa: E402
from dsseg.schema import TIMING_STAGES  # noqa: E402
from dsseg.timing import StageTimer  # noqa: E402

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
    """DiffSeg aggregation + merging, ours (float32 torch, KL by matrix products) against the
    float64 loop-by-loop transcription of the official algorithm, on one image's attention."""
    backbone, method_config = segmenter.backbone, segmenter.method_config
    pixels, _ = segmenter.prepare(np.asarray(decode_image(data)))
    bundle = segmenter.extractor(to_model_input(pixels[None], backbone.device, backbone.dtype))
    segment_diffseg(bundle, method_config)  # warm-up
    timer = StageTimer(backbone.device)
    ours = segment_diffseg(bundle, method_config, timer)[0].labels.cpu().numpy()
    ours_ms = timer.ms["aggregate"] + timer.ms["segment"]
    attention = {grid[0]: maps[0].cpu().numpy() for grid, maps in bundle.self_attention.items()}
    start = time.perf_counter()
    reference = reference_diffseg(
        attention,
        kl_threshold=method_config.kl_threshold,
        iterations=method_config.iterations,
        num_points=bundle.latent_hw[0] // method_config.anchor_spacing,
        upsample_factor=method_config.upsample_factor,
    )
    reference_ms = (time.perf_counter() - start) * 1000.0
    return {
        "stage": "aggregate+segment (DiffSeg)",
        "ours_ms": round(ours_ms, 1),
        "straightforward_ms": round(reference_ms, 1),
        "speedup": round(reference_ms / ours_ms, 1),
        "segments": [int(ours.max()) + 1, int(reference.max()) + 1],
        "pixel_agreement": round(relabelled_agreement(ours, reference), 5),
    }


def benchmark(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    backbone = load_backbone(args.backbone, device=args.device, dtype=args.dtype, offline=args.offline)
    load_seconds = time.perf_counter() - start
    segmenter = Segmenter(backbone, args.method, params_from_args(args))
    data = Path(args.image).read_bytes()
    runs = []
    comparison = None
    if args.compare:
        if args.method != "diffseg" or segmenter.extract_config.geometry == "aspect":
            raise SystemExit("--compare covers DiffSeg on square inputs")
        comparison = compare_with_reference(segmenter, data)
    for batch_size in args.batch_sizes:
        if backbone.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run_once(segmenter, data, batch_size)  # warm-up
        samples = [run_once(segmenter, data, batch_size) for _ in range(args.repeats)]
        stages = {stage: statistics.median(s[stage] for s in samples) for stage in samples[0]}
        total = statistics.median(sum(s.values()) for s in samples)
        runs.append(
            {
                "batch_size": batch_size,
                "ms_per_image": {k: round(v, 2) for k, v in stages.items()},
                "images_per_second": {k: round(1000.0 / v, 2) for k, v in stages.items()},
                "end_to_end_ms_per_image": round(total, 2),
                "end_to_end_images_per_second": round(1000.0 / total, 3),
                "peak_device_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if backbone.device.type == "cuda" else None,
            }
        )
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
    header = f"{'batch':>5} " + " ".join(f"{stage:>9}" for stage in TIMING_STAGES) + f" {'total':>9} {'img/s':>7}"
    print(f"{report['backbone']} on {report['device']} ({report['dtype']}), ms per image (median of {report['repeats']})", file=sys.stderr)
    print(header, file=sys.stderr)
    for run in report["runs"]:
        cells = " ".join(f"{run['ms_per_image'].get(stage, float('nan')):9.1f}" for stage in TIMING_STAGES)
        print(f"{run['batch_size']:>5} {cells} {run['end_to_end_ms_per_image']:9.1f} {run['end_to_end_images_per_second']:7.2f}", file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(DEFAULT_IMAGE), help="image to segment (default: a BSDS500 test image)")
    parser.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch size after one warm-up")
    parser.add_argument("--json", help="also write the report to this file")
    parser.add_argument("--compare", action="store_true", help="also time the float64 loop transcription of official DiffSeg (slow)")
    add_model_arguments(parser)
    add_method_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        split_params(args.method, params_from_args(args))
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if args.repeats < 1 or min(args.batch_sizes) < 1:
        parser.error("--repeats and batch sizes must be ≥ 1")
    report = benchmark(args)
    print_table(report)
    text = json.dumps(report, indent=2, default=str)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
