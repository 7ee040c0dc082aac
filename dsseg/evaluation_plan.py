"""What one evaluation run is set to: a preset (one published table row), the flags, or both,
resolved into one ``Plan`` before any model runs (``jobs/evaluate.py``)."""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass, field
from typing import Any

from dsseg.cli import parse_param_values
from dsseg.datasets import DATASETS
from dsseg.jobconfig import MethodSpec, load_run_file
from dsseg.presets import BACKGROUND_TUNING, Preset, Tuning, get_preset

# The DiffSeg protocol (the 512² model frame) for the datasets its papers report; the label's size elsewhere.
MODEL_FRAME_DATASETS = ("cocostuff27", "cityscapes27")
DEFAULT_BACKBONE = "CompVis/stable-diffusion-v1-4"


@dataclass(frozen=True)
class Plan:
    """Everything one evaluation run is set to: from a preset, from the flags, or both."""

    dataset: str
    options: dict[str, Any]
    frame: str
    backbone: str
    configs: tuple[MethodSpec, ...]
    class_filter: str | None
    tunings: dict[int, Tuning] = field(default_factory=dict)  # config index → the parameter chosen on another split
    preset: Preset | None = None


def dataset_options(dataset: str, split: str | None, classes: str | None) -> dict[str, Any]:
    if dataset == "manifest":
        return {"class_names": tuple(c.strip() for c in (classes or "").split(",") if c.strip())}
    return {"split": split} if split else {}


def make_plan(args: argparse.Namespace) -> Plan:
    """Resolve the preset (if any) and the flags into one plan; ``ValueError`` on conflicts."""
    preset = get_preset(args.preset) if args.preset else None
    if preset:
        if args.dataset and not preset.accepts(args.dataset):
            raise ValueError(f"preset {preset.name} evaluates {preset.dataset}; --dataset {args.dataset} has other classes")
        if args.methods or args.config:
            raise ValueError("a preset fixes the method config: drop --methods/--config (or use --param to vary it, and lose the match)")
        dataset = args.dataset or preset.dataset
        spec = preset.spec()
        if args.param:
            spec = MethodSpec(spec.method, {**spec.params, **parse_param_values(args.param)})
        configs = (spec,)
        frame = args.frame or preset.frame
        split = args.split or preset.split
        backbone = args.backbone or preset.backbone
        class_filter = args.class_filter if args.class_filter is not None else preset.class_filter
    else:
        dataset = args.dataset
        configs = method_specs(args)
        frame = args.frame or ("model" if dataset in MODEL_FRAME_DATASETS else "label")
        split = args.split
        backbone = args.backbone or DEFAULT_BACKBONE
        class_filter = args.class_filter
    if class_filter in ("", "none"):
        class_filter = None
    if frame == "label":  # scoring at the label's size segments the whole image unless a config says otherwise
        configs = tuple(s if "geometry" in s.params else MethodSpec(s.method, {**s.params, "geometry": "aspect"}) for s in configs)
    tunings = {}
    for index, spec in enumerate(configs):
        if spec.method != "openvocab":
            continue
        tuning = preset.tuning if preset and preset.tuning else Tuning("background_threshold", BACKGROUND_TUNING, "")
        if args.tune_on or (preset and preset.tuning):
            tunings[index] = Tuning(tuning.param, tuning.values, args.tune_on or tuning.split, tuning.protocol, tuning.metric)
    for tuning in tunings.values():
        evaluated = split or "(the reader's default)"
        if tuning.split == split or (split is None and tuning.split == default_split(dataset)):
            raise ValueError(f"--tune-on {tuning.split} is the evaluated split {evaluated}: tune on another split, never on the test split")
    if args.tune_on and not tunings:
        raise ValueError("--tune-on chooses openvocab's background threshold; no openvocab config is evaluated")
    return Plan(dataset, dataset_options(dataset, split, args.classes), frame, backbone, configs, class_filter, tunings, preset)


def default_split(dataset: str) -> str | None:
    """The split a reader uses when none is given (its ``split`` default), or None."""
    try:
        parameter = inspect.signature(DATASETS[dataset]).parameters.get("split")
    except (TypeError, ValueError):
        return None
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def method_specs(args: argparse.Namespace) -> tuple[MethodSpec, ...]:
    """The run's method configs from ``--config`` or ``--methods`` + ``--param``."""
    if args.config:
        configs = load_run_file(args.config).get("configs")
        if not configs:
            raise ValueError(f"--config {args.config} has no `configs:` list")
        return tuple(configs)
    params = parse_param_values(args.param)
    return tuple(MethodSpec(method.strip(), params) for method in (args.methods or "diffseg").split(",") if method.strip())
