"""``dsseg segment IMAGE_OR_DIR --out DIR``: segment images locally (no Ray) and write PNGs."""

from __future__ import annotations

import argparse
import sys

from dsseg.commands.common import (
    CAPTIONER_HELP,
    STRICT_HELP,
    CommandParser,
    add_method_arguments,
    add_model_arguments,
    params_from_args,
    positive_int,
)


def build_parser() -> CommandParser:
    parser = CommandParser(prog="dsseg segment", description="Segment images locally; write overlay and label PNGs.")
    parser.add_argument("input", metavar="IMAGE_OR_DIR", help="an image file or a folder of images")
    parser.add_argument("--out", required=True, help="folder for <name>_overlay.png and <name>_labels.png")
    parser.add_argument("--limit", type=positive_int, help="only the first N images")
    parser.add_argument("--strict", action="store_true", help=STRICT_HELP)
    parser.add_argument("--captioner", help=CAPTIONER_HELP)
    add_model_arguments(parser)
    add_method_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Segment each image, write ``<name>_overlay.png`` and ``<name>_labels.png`` (uint16 segment
    ids); an image that fails is reported and the rest go on (exit 1 then only with ``--strict``)."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from dsseg.io.images import decode_image
    from dsseg.io.overlay import overlay
    from dsseg.io.sources import list_inputs, read_bytes
    from dsseg.model.backbone import load_backbone
    from dsseg.model.captioner import load_captioner
    from dsseg.segmenter import Segmenter
    from dsseg.spec import MethodSpec

    spec = MethodSpec(args.method, params_from_args(args))
    items = list_inputs(args.input, args.limit)
    backbone = load_backbone(
        args.backbone,
        device=args.device,
        dtype=args.dtype,
        offline=args.offline,
        compile=args.compile,
        methods=[spec.method],
    )
    captioner = (
        load_captioner(args.captioner, device=backbone.device, dtype=backbone.dtype, offline=args.offline)
        if args.captioner
        else None
    )
    segmenter = Segmenter(backbone, spec, captioner=captioner)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for item in items:
        stem = Path(item["image_id"]).with_suffix("").as_posix().replace("/", "__")
        try:
            rgb = decode_image(read_bytes(item["source"], item["offset"], item["size"]))[0]
            ((result,),) = segmenter.segment(segmenter.batch([rgb], classes=[item["classes"]]))
        except Exception as error:  # report and go on with the next image
            failures += 1
            print(f"{item['image_id']}: error: {type(error).__name__}: {error}", file=sys.stderr)
            continue
        Image.fromarray(overlay(rgb, result.labels)).save(out / f"{stem}_overlay.png")
        Image.fromarray(result.labels.astype(np.uint16)).save(out / f"{stem}_labels.png")
        named = f" ({', '.join(sorted({n for n in result.names if n}))})" if result.names else ""
        caption = f"; caption: {result.caption!r}" if result.caption else ""
        print(
            f"{item['image_id']}: {result.num_segments} segments{named} in {sum(result.timings_ms.values()):.0f} ms{caption}"
        )
    return 1 if failures and args.strict else 0
