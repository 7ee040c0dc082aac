"""``dsseg pseudolabel`` (= ``jobs/pseudolabel.py``): pseudo-label datasets on Ray: image-level labels (or none) → pixel pseudo-labels for training.

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

from dsseg.commands.common import (
    CommandParser,
    add_model_arguments,
    batch_size_value,
    plain,
    positive_int,
    request_from,
)
from dsseg.pseudolabel.settings import AGNOSTIC_METHODS, FORMATS, PSEUDO_LABEL_PRESETS, PseudoLabelRequest

NO_BAND = "none"  # --ignore-margin none: no ignore band


def margin_value(text: str) -> float | None:
    """``--ignore-margin``: a number, or ``none`` for no ignore band (None)."""
    if text.strip().lower() == NO_BAND:
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number or {NO_BAND}; got {text!r}") from None


def formats_value(text: str) -> tuple[str, ...]:
    """``--format``: comma-separated names (``PseudoLabelRequest`` checks them against ``FORMATS``)."""
    return tuple(f.strip() for f in text.split(",") if f.strip())


def build_parser() -> CommandParser:
    parser = CommandParser(prog="dsseg pseudolabel", description=plain(__doc__))
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
    parser.add_argument(
        "--format",
        dest="formats",
        type=formats_value,
        default=FORMATS,
        help="comma-separated: voc, coco (default voc,coco)",
    )
    parser.add_argument(
        "--class-list",
        help="class order for the label PNGs: voc20, coco80, context59 or a file of names (background is prepended)",
    )
    parser.add_argument(
        "--ignore-margin",
        type=margin_value,
        default=argparse.SUPPRESS,
        help="pixels whose best score leads by less become 255, or none (default 0.1; a --preset's own)",
    )
    parser.add_argument("--background-threshold", type=float, help="background score (default: the method's)")
    parser.add_argument(
        "--pamr-iterations",
        type=int,
        default=argparse.SUPPRESS,
        help="image-aware refinement steps, 0 = off (default 10; a --preset's own)",
    )
    parser.add_argument(
        "--crf-iterations",
        type=int,
        default=argparse.SUPPRESS,
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
        "--agnostic-method", default="diffseg", choices=AGNOSTIC_METHODS, help="segments for images without labels"
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
        "--no-images",
        dest="copy_images",
        action="store_false",
        help="do not copy the images into VOCdevkit/VOC2012/JPEGImages",
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
    parser.add_argument("--limit", type=positive_int, help="only the first N images (after --shard)")
    parser.add_argument("--shard", help="I/N: this job's share of the images")
    parser.add_argument(
        "--batch-size", type=batch_size_value, default=4, help="images per model call, or auto (default %(default)s)"
    )
    parser.add_argument("--num-workers", type=positive_int, default=1, help="model actors (default %(default)s)")
    add_model_arguments(parser, backbone_default=None, note=", or the --preset's")
    return parser


def request_of(args: argparse.Namespace) -> PseudoLabelRequest:
    """The typed request of parsed flags."""
    return request_from(args, PseudoLabelRequest)


def run(args: argparse.Namespace) -> int:
    """Exit 0 once every image has its row (1: rows are missing; rerun to resume)."""
    from dsseg.pseudolabel.run import make_pseudolabels, summary_text

    summary = make_pseudolabels(request_of(args))
    print(summary_text(summary))
    return 0 if summary["complete"] else 1
