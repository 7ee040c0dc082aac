"""Command line: ``dsseg segment`` (quick local run, PNG overlays) and ``dsseg job`` (the Ray job).

Method and extraction parameters are given as ``--param NAME=VALUE`` (VALUE read as JSON when
it parses, e.g. ``--param kl_threshold=0.9`` or ``--param resolutions=[64,32,16]``), or
through the common shortcuts ``--timestep``, ``--noise`` and ``--geometry``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dsseg.backbone import DEFAULT_BACKBONE, BackboneNotFoundError
from dsseg.extract import NOISE_MODES
from dsseg.image import GEOMETRIES
from dsseg.methods import METHODS


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--backbone", default=DEFAULT_BACKBONE, help="tiny | sd-v1-random | hub id | local diffusers folder (default: %(default)s)")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"], help="auto: float16 on CUDA, float32 on CPU")
    group.add_argument("--offline", action="store_true", help="never contact the Hugging Face hub")


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("method")
    group.add_argument("--method", default="diffseg", choices=sorted(METHODS))
    group.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="method or extraction parameter (repeatable)")
    group.add_argument("--timestep", type=int, help="UNet timestep (default 300; with ddim_inversion it follows from inversion_steps)")
    group.add_argument("--noise", choices=NOISE_MODES, help="none | noise | ddim_inversion (default: the method's — none for diffseg, ddim_inversion for ncut)")
    group.add_argument("--geometry", choices=GEOMETRIES, help="center_crop (paper protocol, default) | squash | aspect")


def parse_param_values(pairs: Sequence[str]) -> dict[str, Any]:
    """``["kl_threshold=0.9", "refine=true"]`` → ``{"kl_threshold": 0.9, "refine": True}``."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--param expects NAME=VALUE; got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params[name.strip()] = tuple(value) if isinstance(value, list) else value
    return params


def params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    params = parse_param_values(args.param)
    for name in ("timestep", "noise", "geometry"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    return params


def job_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobs/segment.py",
        description="Segment every image under --input on Ray; write Parquet rows with COCO RLE masks to --output.",
    )
    parser.add_argument("--input", required=True, help="an image file or a folder of images (searched recursively)")
    parser.add_argument("--output", required=True, help="output folder: segments/*.parquet and config.json")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else an embedded local Ray)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call (default %(default)s)")
    parser.add_argument("--num-workers", type=int, default=1, help="model actors (default %(default)s)")
    parser.add_argument("--gpus-per-worker", type=float, help="GPUs per actor, fractions allowed (default: 1 if the cluster has GPUs)")
    parser.add_argument("--limit", type=int, help="segment only the first N images")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results in --output")
    add_model_arguments(parser)
    add_method_arguments(parser)
    return parser


def job_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jobs/segment.py`` and ``dsseg job``."""
    from dsseg.pipeline import SegmentJob, run_segment_job

    parser = job_parser()
    args = parser.parse_args(argv)
    try:
        job = SegmentJob(
            input=args.input,
            output=args.output,
            backbone=args.backbone,
            method=args.method,
            params=params_from_args(args),
            device=args.device,
            dtype=args.dtype,
            offline=args.offline,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            gpus_per_worker=args.gpus_per_worker,
            limit=args.limit,
            overwrite=args.overwrite,
        )
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    try:
        summary = run_segment_job(job, address=args.address)
    except (FileExistsError, BackboneNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0  # error rows are results, reported in the summary; they do not fail the job


def segment_main(argv: Sequence[str] | None = None) -> int:
    """``dsseg segment IMAGE_OR_DIR --out DIR``: segment locally (no Ray) and write PNGs."""
    from dsseg.api import Segmenter, split_params
    from dsseg.backbone import load_backbone
    from dsseg.image import as_rgb_array
    from dsseg.overlay import overlay
    from dsseg.pipeline import list_images

    parser = argparse.ArgumentParser(prog="dsseg segment", description="Segment images locally; write overlay and label PNGs.")
    parser.add_argument("input", help="an image file or a folder of images")
    parser.add_argument("--out", required=True, help="folder for <name>_overlay.png and <name>_labels.png")
    parser.add_argument("--limit", type=int, help="only the first N images")
    add_model_arguments(parser)
    add_method_arguments(parser)
    args = parser.parse_args(argv)
    try:
        params = params_from_args(args)
        split_params(args.method, params)
        items = list_images(args.input, args.limit)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    try:
        backbone = load_backbone(args.backbone, device=args.device, dtype=args.dtype, offline=args.offline)
    except BackboneNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    segmenter = Segmenter(backbone, args.method, params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for item in items:
        stem = Path(item["image_id"]).with_suffix("").as_posix().replace("/", "__")
        try:
            rgb = as_rgb_array(item["source"])
            pixels, geometry = segmenter.prepare(rgb)
            result = segmenter(pixels[None], [geometry])[0]
        except Exception as error:  # report and go on with the next image
            failures += 1
            print(f"{item['image_id']}: error: {type(error).__name__}: {error}", file=sys.stderr)
            continue
        Image.fromarray(overlay(rgb, result.labels)).save(out / f"{stem}_overlay.png")
        Image.fromarray(result.labels.astype(np.uint16)).save(out / f"{stem}_labels.png")
        print(f"{item['image_id']}: {result.num_segments} segments in {sum(result.timings_ms.values()):.0f} ms")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"segment": segment_main, "job": job_main}
    if not argv or argv[0] not in commands:
        print("usage: dsseg {segment,job} ...\n  segment  segment images locally and write PNG overlays\n  job      run the Ray segment job (as jobs/segment.py)", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
