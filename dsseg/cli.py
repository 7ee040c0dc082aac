"""Command line: ``dsseg <command>``; ``jobs/*.py`` are these commands for ``ray job submit``.

    dsseg segment      segment images locally (no Ray) and write PNG overlays
    dsseg job          the Ray segment job: Parquet rows with COCO RLE masks (jobs/segment.py)
    dsseg evaluate     benchmark evaluation under the papers' protocols (jobs/evaluate.py)
    dsseg pseudolabel  pseudo-label datasets (jobs/pseudolabel.py)
    dsseg benchmark    per-stage latency and memory (jobs/benchmark.py)
    dsseg manc-study   NCut stopping rules on planted attention (jobs/manc_study.py)
    dsseg explore      local web app: re-segment one image from cached attention, browse a job's output
    dsseg compact      merge a job output's small part files into large ones (jobs/compact.py)

Method and extraction parameters are given as ``--param NAME=VALUE`` (VALUE read as JSON when
it parses, e.g. ``--param kl_threshold=0.9`` or ``--param resolutions=[64,32,16]``), or through
the shortcuts ``--timestep``, ``--noise`` and ``--geometry``. The library names parameters in
its errors (``batch_size``); ``flag_message`` says them as the flags a user typed. Only light
modules are imported here, so ``--help`` answers at once; each command loads what it needs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from dsseg.errors import ConfigError
from dsseg.io.images import GEOMETRIES
from dsseg.methods import METHOD_NAMES
from dsseg.model.config import DEFAULT_BACKBONE, DEFAULT_CAPTIONER, NOISE_MODES
from dsseg.model.filter_specs import candidates_filter
from dsseg.model.vocabularies import VOCABULARIES

if TYPE_CHECKING:
    from dsseg.job.config import SegmentJob

# command → (module with main(argv), one line of help)
COMMANDS = {
    "segment": ("dsseg.cli", "segment images locally (no Ray) and write PNG overlays"),
    "job": ("dsseg.cli", "the Ray segment job: Parquet rows with COCO RLE masks (jobs/segment.py)"),
    "evaluate": ("dsseg.evaluation.evaluate", "benchmark evaluation under the papers' protocols (jobs/evaluate.py)"),
    "pseudolabel": ("dsseg.evaluation.pseudolabel", "pseudo-label datasets (jobs/pseudolabel.py)"),
    "benchmark": ("dsseg.benchmark.run", "per-stage latency and memory (jobs/benchmark.py)"),
    "manc-study": ("dsseg.benchmark.manc_study", "NCut stopping rules on planted attention (jobs/manc_study.py)"),
    "explore": (
        "dsseg.explore.command",
        "local web app: re-segment one image from cached attention, browse a job's output",
    ),
    "compact": ("dsseg.cli", "merge a job output's small part files into large ones (jobs/compact.py)"),
}
METHOD_PARAM_FLAGS = ("timestep", "noise", "geometry", "classes", "vocabulary", "method")


STRICT_HELP = "exit 1 when any image failed (default: error rows are results; exit 0 once every image has its row)"


CAPTIONER_HELP = (
    "BLIP captioner for configs that read captions (--param naming=caption, --param descriptors=caption, "
    f"--class-filter caption): tiny | hub id (e.g. {DEFAULT_CAPTIONER}) | local folder"
)


def add_model_arguments(
    parser: argparse.ArgumentParser, backbone_default: str | None = DEFAULT_BACKBONE, note: str = ""
) -> None:
    """The model flags. ``backbone_default`` None leaves ``--backbone`` unset when not given (a run
    file or a preset supplies it); the help then still names the default, with ``note``."""
    group = parser.add_argument_group("model")
    shown = f" (default: {backbone_default or DEFAULT_BACKBONE}{note})"
    group.add_argument(
        "--backbone",
        default=backbone_default,
        help="tiny | sd-v1-random | tiny-sdxl | sdxl-random | hub id | local diffusers folder" + shown,
    )
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    group.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="auto: float16 on CUDA, float32 on CPU",
    )
    group.add_argument("--offline", action="store_true", help="never contact the Hugging Face hub")
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the VAE encoder and the UNet's ResNet and feed-forward blocks",
    )


def plain(doc: str | None) -> str:
    """A module docstring as ``--help`` text: without reStructuredText's double backticks."""
    return (doc or "").replace("``", "")


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("method")
    group.add_argument("--method", default="diffseg", choices=METHOD_NAMES)
    group.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="method or extraction parameter (repeatable)"
    )
    group.add_argument(
        "--timestep", type=int, help="UNet timestep (default 300; with ddim_inversion it follows from inversion_steps)"
    )
    group.add_argument(
        "--noise",
        choices=NOISE_MODES,
        help="none | noise | ddim_inversion (default: the method's — none for diffseg, ddim_inversion for ncut)",
    )
    group.add_argument(
        "--geometry",
        choices=GEOMETRIES,
        help="center_crop (paper protocol, default) | squash | aspect | diffcut_crop (DiffCut's dataloader: side min − 1)",
    )
    group.add_argument(
        "--classes",
        help='candidate class names, comma-separated ("horse,grass,traffic light"): labels for openvocab, names for the others',
    )
    group.add_argument(
        "--vocabulary", choices=sorted(VOCABULARIES), help="a shipped class list as the candidates (zero-shot)"
    )


def parse_param_values(pairs: Sequence[str]) -> dict[str, Any]:
    """``["kl_threshold=0.9", "refine=true"]`` → ``{"kl_threshold": 0.9, "refine": True}``."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError("param", f"expects NAME=VALUE; got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params[name.strip()] = tuple(value) if isinstance(value, list) else value
    return params


def params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    from dsseg.io.sources import parse_classes

    params = parse_param_values(args.param)
    for name in ("timestep", "noise", "geometry", "vocabulary"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if args.classes is not None:
        params["classes"] = tuple(parse_classes(args.classes) or ())
    return params


def flag_message(error: BaseException, flags: Collection[str] = ()) -> str:
    """An error as a command-line user reads it: a ``ConfigError`` about a setting with a flag names
    the flag (``--batch-size: must be …``); one about a method parameter names ``--param NAME``."""
    if not isinstance(error, ConfigError):
        return str(error)
    if error.param in flags:
        return f"--{error.param.replace('_', '-')}: {error.reason}"
    if error.param in ("param", "config"):
        return f"--{error.param}: {error.reason}"
    return f"--param {error.param}: {error.reason}"


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    """The settings ``parser`` has flags for, by parameter name (``--batch-size`` → ``batch_size``)."""
    return {action.dest for action in parser._actions if action.option_strings}


def batch_size_value(text: str) -> int | str:
    """``--batch-size``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto; got {text!r}")
    return value


def job_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsseg job",
        description="Segment images on Ray; write Parquet rows with COCO RLE masks to --output. "
        "Re-running the same command resumes: finished images are not redone.",
    )
    parser.add_argument(
        "--input", help="image file, folder, glob, URI (s3://, gs://), manifest (.parquet/.jsonl) or .tar shard(s)"
    )
    parser.add_argument(
        "--output", help="output folder or URI: segments/config=<id>/part-*.parquet, config.json, _SUCCESS"
    )
    parser.add_argument(
        "--config", help="YAML run file: any of these settings, and `configs:` — a list of {method: NAME, PARAM: VALUE}"
    )
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else an embedded local Ray)")
    parser.add_argument("--strict", action="store_true", help=STRICT_HELP)
    parser.add_argument(
        "--batch-size",
        type=batch_size_value,
        help="images per model call, or auto: each actor fits its free memory (default 4)",
    )
    parser.add_argument("--num-workers", type=int, help="model actors (default 1)")
    parser.add_argument(
        "--gpus-per-worker", type=float, help="GPUs per actor, fractions allowed (default: 1 if the cluster has GPUs)"
    )
    parser.add_argument("--limit", type=int, help="segment only the first N images (after --shard)")
    parser.add_argument("--shard", help="I/N: only the images whose id hashes to I of N disjoint shards, e.g. 0/4")
    parser.add_argument(
        "--max-image-side", type=int, help="decode images at most this large; masks stay at full size (default 4096)"
    )
    parser.add_argument(
        "--max-pixels", type=int, help="refuse images whose header exceeds this many pixels (default 100000000)"
    )
    parser.add_argument(
        "--rows-per-file", type=int, help="rows per write batch, split into one part file per config (default 256)"
    )
    parser.add_argument(
        "--flush-seconds",
        type=float,
        help="also write a batch once its first row has waited this long, so rows land (and survive Ctrl-C) "
        "within about this time (default 60)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="delete earlier results in --output (with --shard: that shard's) and start afresh",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        default=None,
        help="write into an output that holds other files or another --input's results (recorded in config.json)",
    )
    parser.add_argument(
        "--retry-errors",
        action="store_true",
        default=None,
        help="also redo error rows with a transient reason (read_failed, out_of_memory, model_failed, encode_failed)",
    )
    parser.add_argument(
        "--class-filter",
        help="narrow each image's candidate classes: clip:MODEL (hub id or folder), caption (the classes the image's "
        "caption names), caption+clip:MODEL (either), candidates:FILE or package.module:factory",
    )
    parser.add_argument(
        "--candidates",
        metavar="FILE",
        help="each image's candidate classes from a file (= --class-filter candidates:FILE): .json {image: [names]} or "
        "DiffSegmenter's released lists, .jsonl or .parquet with image_id and classes; matched by id or file stem",
    )
    parser.add_argument("--captioner", help=CAPTIONER_HELP)
    parser.add_argument(
        "--ignore-exif", dest="exif_transpose", action="store_false", default=None,
        help="keep images in their stored pixel order instead of turning them upright by EXIF (as benchmark labels are drawn)",
    )  # fmt: skip
    parser.add_argument(
        "--mask-frame", choices=("original", "model"),
        help="original: masks at the image's size (default); model: in the model-input frame, e.g. the 512² centre crop",
    )  # fmt: skip
    add_model_arguments(parser, backbone_default=None, note=", or the run file's")
    parser.set_defaults(device=None, dtype=None, offline=None, compile=None)
    add_method_arguments(parser)
    parser.set_defaults(method=None)
    return parser


def job_from_args(args: argparse.Namespace) -> SegmentJob:
    """Settings from ``--config`` overlaid by the flags given; ``--method``/``--param`` make one config."""
    from dsseg.job.config import RUN_FILE_KEYS, SegmentJob, load_run_file
    from dsseg.spec import MethodSpec

    settings = load_run_file(args.config) if args.config else {}
    given = {
        name: getattr(args, name, None) for name in RUN_FILE_KEYS - {"configs"}
    }  # every SegmentJob setting has a flag
    settings.update({name: value for name, value in given.items() if value is not None})
    if args.candidates:
        settings["class_filter"] = candidates_filter(args.class_filter, args.candidates)
    params = params_from_args(args)
    if args.method is not None or params:
        if "configs" in settings:
            raise ConfigError(
                "config", "give method configs either in --config (configs:) or with --method/--param, not both"
            )
        settings["configs"] = (MethodSpec(args.method or "diffseg", params),)
    missing = [name for name in ("input", "output") if name not in settings]
    if missing:
        raise ConfigError("config", f"--{' and --'.join(missing)} required (on the command line or in --config)")
    return SegmentJob(**settings)


def job_main(argv: Sequence[str] | None = None) -> int:
    """``dsseg job`` (= ``jobs/segment.py``): exit 0 when every image × config has a row."""
    parser = job_parser()
    args = parser.parse_args(argv)
    try:
        job = job_from_args(args)
    except (TypeError, ValueError) as error:
        parser.error(flag_message(error, flags_of(parser)))
    from dsseg.job.runner import run_segment_job
    from dsseg.model.backbone import BackboneNotFoundError

    try:
        summary = run_segment_job(job, address=args.address)
    except (ValueError, BackboneNotFoundError, RuntimeError) as error:
        print(f"error: {flag_message(error, flags_of(parser))}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    if not summary["complete"]:
        print(
            f"dsseg: {summary['missing']} image × config rows are missing; re-run the same command to resume",
            file=sys.stderr,
        )
        return 1
    if args.strict and summary["error"]:
        print(f"dsseg: {summary['error']} error rows (--strict): {summary['errors_by_reason']}", file=sys.stderr)
        return 1
    return 0  # error rows are results, reported in the summary; they do not fail the job


def segment_main(argv: Sequence[str] | None = None) -> int:
    """``dsseg segment IMAGE_OR_DIR --out DIR``: segment locally (no Ray) and write PNGs."""
    parser = argparse.ArgumentParser(
        prog="dsseg segment", description="Segment images locally; write overlay and label PNGs."
    )
    parser.add_argument("input", help="an image file or a folder of images")
    parser.add_argument("--out", required=True, help="folder for <name>_overlay.png and <name>_labels.png")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--strict", action="store_true", help=STRICT_HELP)
    parser.add_argument("--captioner", help=CAPTIONER_HELP)
    add_model_arguments(parser)
    add_method_arguments(parser)
    args = parser.parse_args(argv)

    from pathlib import Path

    import numpy as np
    from PIL import Image

    from dsseg.io.images import decode_image
    from dsseg.io.overlay import overlay
    from dsseg.io.sources import list_inputs, read_bytes
    from dsseg.model.backbone import BackboneNotFoundError, load_backbone
    from dsseg.model.captioner import CaptionerNotFoundError, load_captioner
    from dsseg.segmenter import Segmenter
    from dsseg.spec import MethodSpec

    try:
        spec = MethodSpec(args.method, params_from_args(args))
        items = list_inputs(args.input, args.limit)
    except (TypeError, ValueError) as error:
        parser.error(flag_message(error, METHOD_PARAM_FLAGS))
    try:
        backbone = load_backbone(
            args.backbone, device=args.device, dtype=args.dtype, offline=args.offline, compile=args.compile
        )
        captioner = (
            load_captioner(args.captioner, device=backbone.device, dtype=backbone.dtype, offline=args.offline)
            if args.captioner
            else None
        )
        segmenter = Segmenter(backbone, spec, captioner=captioner)
    except (BackboneNotFoundError, CaptionerNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ConfigError as error:
        parser.error(flag_message(error, (*METHOD_PARAM_FLAGS, "captioner")))
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


class CommandLineError(Exception):
    """A flag or argument ``compact_main`` cannot take: reported on one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise ``CommandLineError`` instead of printing the usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CommandLineError(message)


def target_mb_value(text: str) -> float:
    """``--target-mb``: a number of MiB > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value * 1024**2 < 1:
        raise argparse.ArgumentTypeError(f"must be a number > 0; got {text!r}")
    return value


def compact_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dsseg compact",
        description="Merge the small part files of a segment job's output (segments/config=<id>/part-*.parquet) "
        "into parts of about --target-mb, rows kept exactly; prints a JSON summary. Each merge is committed "
        "by a record (_compaction-*.json): dsseg's readers and a resumed job see the old parts or the new "
        "one, never both, even if compaction is killed; rerun it to finish or clean up. Parts a job is "
        "still writing are not touched, but do not run it while a job's final de-duplication (its last "
        "step) runs on the same output, nor while an evaluation or the explorer reads it, nor two compactions of "
        "one output at once. Readers that list the "
        "folder themselves (pq.read_table(OUTPUT/segments)) may see both old and new rows for a moment.",
    )
    parser.add_argument("output", metavar="OUTPUT", help="a segment job's --output folder or URI")
    parser.add_argument(
        "--target-mb", type=target_mb_value, default=128.0, help="size of a merged part in MiB (default 128)"
    )
    parser.add_argument(
        "--config", action="append", metavar="ID", help="only this config's parts (repeatable; default: every config)"
    )
    return parser


def compact_main(argv: Sequence[str] | None = None) -> int:
    """``dsseg compact OUTPUT`` (= ``jobs/compact.py``): exit 0 once compacted; errors on one line, exit 2."""
    parser = compact_parser()
    try:
        args = parser.parse_args(argv)
    except CommandLineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from dsseg.io.compact import compact

    try:
        summary = compact(args.output, round(args.target_mb * 1024**2), args.config)
    except (OSError, ValueError) as error:  # no such output or config, an unreadable file
        print(f"error: {flag_message(error, ('config',))}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return (
        "usage: dsseg {"
        + ",".join(COMMANDS)
        + "} ...\n"
        + "\n".join(lines)
        + "\n(dsseg COMMAND --help for each command's flags)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    if argv[0] not in COMMANDS:
        print(f"dsseg: unknown command {argv[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    try:
        return run_command(argv[0], argv[1:])
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM (ray job stop): one line, status 130
        from dsseg.job.interrupts import JobInterrupted, quiet_exit

        ended = isinstance(interrupt, JobInterrupted)  # it says how many rows were written
        quiet_exit(str(interrupt) if ended else "interrupted; run the same command to resume")
        return 130  # not reached: quiet_exit leaves the process


def run_command(command: str, argv: list[str]) -> int:
    """Run ``dsseg COMMAND ARGV``; the first SIGINT/SIGTERM raises ``Interrupted`` (a second exits)."""
    from dsseg.job.interrupts import interruptible

    with interruptible(mute_stdout=True):
        if command == "segment":
            return segment_main(argv)
        if command == "job":
            return job_main(argv)
        if command == "compact":
            return compact_main(argv)
        return importlib.import_module(COMMANDS[command][0]).main(argv)


if __name__ == "__main__":
    sys.exit(main())
