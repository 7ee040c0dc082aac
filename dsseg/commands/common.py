"""What every command's parser shares: one-line errors that name flags, and the model and method flags.

A ``CommandParser`` raises ``UsageError`` instead of printing its usage block; ``dsseg.commands``
prints that as one line naming the flag, then where to read more. Library code raises
``ConfigError(param, reason)`` with the parameter as the library names it (``batch_size``); the
parser knows which flag sets each parameter, so ``describe`` says it as the user typed it
(``--batch-size``, ``--param kl_threshold``, or a positional's name).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from dsseg.errors import ConfigError
from dsseg.io.images import GEOMETRIES
from dsseg.methods import METHOD_NAMES
from dsseg.model.config import DEFAULT_BACKBONE, DEFAULT_CAPTIONER, NOISE_MODES
from dsseg.model.vocabularies import VOCABULARIES

STRICT_HELP = "exit 1 when any image failed (default: error rows are results; exit 0 once every image has its row)"
CAPTIONER_HELP = (
    "BLIP captioner for configs that read captions (--param naming=caption, --param descriptors=caption, "
    f"--class-filter caption): tiny | hub id (e.g. {DEFAULT_CAPTIONER}) | local folder"
)


class UsageError(Exception):
    """A command line that cannot run: the message names the flag; printed on one line, exit 2."""


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise ``UsageError`` (one line, no usage block), and which
    knows the flag that sets each parameter (``flag_of``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.flag_of: dict[str, str] = {}

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return self.noted(super().add_argument(*args, **kwargs))

    def add_argument_group(self, *args: Any, **kwargs: Any) -> argparse._ArgumentGroup:
        group = super().add_argument_group(*args, **kwargs)
        add = group.add_argument

        def add_and_note(*names: Any, **options: Any) -> argparse.Action:
            return self.noted(add(*names, **options))

        group.add_argument = add_and_note  # type: ignore[method-assign]
        return group

    def noted(self, action: argparse.Action) -> argparse.Action:
        """Remember how the user sets ``action.dest``: its long flag, or a positional's name."""
        if action.dest != "help":
            long = [flag for flag in action.option_strings if flag.startswith("--")]
            positional = str(action.metavar or action.dest.upper())
            self.flag_of.setdefault(action.dest, (long or action.option_strings or [positional])[0])
        return action

    def describe(self, error: BaseException) -> str:
        """``error`` as a command-line user reads it: a ``ConfigError`` about a parameter with a flag
        names the flag (``--batch-size: must be …``); one about a method parameter ``--param NAME``;
        anything else is its own message."""
        if not isinstance(error, ConfigError):
            return str(error)
        if error.param in self.flag_of:
            return f"{self.flag_of[error.param]}: {error.reason}"
        if "param" in self.flag_of:
            return f"--param {error.param}: {error.reason}"
        return f"{error.param}: {error.reason}"


def request_from(args: argparse.Namespace, request_type: type, **values: Any) -> Any:
    """A typed request (a dataclass) from parsed flags of the same names, with ``params`` from
    ``--param`` and ``values`` on top; flags the parser left out (``argparse.SUPPRESS``) keep
    the request's defaults."""
    import dataclasses

    given = vars(args) | {"params": parse_param_values(getattr(args, "param", []))} | values
    names = {field.name for field in dataclasses.fields(request_type)}
    return request_type(**{name: value for name, value in given.items() if name in names})


def plain(doc: str | None) -> str:
    """A module docstring as ``--help`` text: without reStructuredText's double backticks."""
    return (doc or "").replace("``", "")


def positive_int(text: str) -> int:
    """A flag's value that must be an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1; got {text!r}")
    return value


def batch_size_value(text: str) -> int | str:
    """``--batch-size``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto; got {text!r}") from None


DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")


def dtypes_value(text: str) -> tuple[str, ...]:
    """``--dtype`` of ``dsseg benchmark``: comma-separated precisions, no repeats."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in DTYPE_CHOICES]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated precisions from {', '.join(DTYPE_CHOICES)} without repeats; got {text!r}"
        )
    return names


def add_model_arguments(
    parser: argparse.ArgumentParser,
    backbone_default: str | None = DEFAULT_BACKBONE,
    note: str = "",
    dtype_list: bool = False,
) -> None:
    """The model flags. ``backbone_default`` None leaves ``--backbone`` unset when not given (a run
    file or a preset supplies it); the help then still names the default, with ``note``."""
    group = parser.add_argument_group("model")
    shown = f" (default: {backbone_default or DEFAULT_BACKBONE}{note})"
    group.add_argument(
        "--backbone",
        default=backbone_default,
        help="tiny | sd-v1-random | tiny-sdxl | sdxl-random | tiny-sd3 | sd3-random | hub id | local diffusers folder"
        + shown,
    )
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    dtype_help = (
        "auto: float16 on CUDA; on a CPU float32, or bfloat16 where the CPU runs it natively and the "
        "methods are known to agree in it (see docs/speed.md)"
    )
    if dtype_list:
        group.add_argument(
            "--dtype",
            default=("auto",),
            type=dtypes_value,
            help="comma-separated precisions, each measured in turn (e.g. float32,bfloat16); " + dtype_help,
        )
    else:
        group.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=dtype_help)
    group.add_argument("--offline", action="store_true", help="never contact the Hugging Face hub")
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the VAE encoder and the UNet's ResNet and feed-forward blocks",
    )


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """``--method``, ``--param NAME=VALUE`` and the shortcuts for common parameters."""
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
    """``["kl_threshold=0.9", "refine=true"]`` → ``{"kl_threshold": 0.9, "refine": True}``; VALUE
    is read as JSON when it parses (lists become tuples), else kept as text."""
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
    """The method parameters of ``add_method_arguments``' flags: ``--param`` and the shortcuts."""
    from dsseg.io.sources import parse_classes

    params = parse_param_values(args.param)
    for name in ("timestep", "noise", "geometry", "vocabulary"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if args.classes is not None:
        params["classes"] = tuple(parse_classes(args.classes) or ())
    return params


def fail(prog: str, message: str) -> int:
    """Print ``message`` as one line (at most three) and where to read more; returns 2."""
    lines = [line for line in message.removeprefix("argument ").splitlines() if line.strip()] or ["failed"]
    shown = lines[:3] + ([f"… and {len(lines) - 3} more lines"] if len(lines) > 3 else [])
    print(f"{prog}: error: " + "\n  ".join(shown) + f"\n(see: {prog} --help)", file=sys.stderr)
    return 2
