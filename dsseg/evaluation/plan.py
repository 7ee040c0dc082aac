"""What one evaluation run is set to: the user's ``EvaluationRequest`` (a preset, one published
table row; the flags of ``jobs/evaluate.py``; or both), resolved into one ``Plan`` before any
model runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dsseg.errors import ConfigError
from dsseg.evaluation.datasets import reader_splits
from dsseg.evaluation.preset import Preset, Tuning
from dsseg.evaluation.presets import BACKGROUND_TUNING, get_preset
from dsseg.job.config import load_run_file
from dsseg.methods import get_method
from dsseg.model.config import DEFAULT_BACKBONE
from dsseg.model.filter_specs import candidates_filter
from dsseg.settings import RunSettings, check_counts
from dsseg.spec import MethodSpec

# The DiffSeg protocol (the 512² model frame) for the datasets its papers report; the label's size elsewhere.
MODEL_FRAME_DATASETS = ("cocostuff27", "cityscapes27")


@dataclass(frozen=True, kw_only=True)
class EvaluationRequest(RunSettings):
    """One evaluation as the user asked for it (``dsseg evaluate``'s flags, by the same names;
    ``params``: ``--param`` values, for every config). Checked here for what each value alone must
    be; ``make_plan`` resolves the preset and the rules between values."""

    output: str
    root: str
    preset: str | None = None
    dataset: str | None = None
    split: str | None = None
    classes: str | None = None
    methods: str | None = None
    config: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    frame: str | None = None
    score_size: int | None = None
    class_filter: str | None = None
    candidates: str | None = None
    captioner: str | None = None
    tune_on: str | None = None
    tune_limit: int | None = None
    report_images: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.preset and not self.dataset:
            raise ConfigError("dataset", "required, or --preset (--list-presets shows the presets)")
        check_counts(self, "tune_limit", "score_size")
        if self.report_images < 0:
            raise ConfigError("report_images", f"must be ≥ 0; got {self.report_images}")


@dataclass(frozen=True)
class Plan:
    """Everything one evaluation run is set to: from a preset, from the flags, or both.
    ``score_size``: the model frame is scored on a grid of that longer side (None: its pixels)."""

    dataset: str
    options: dict[str, Any]
    frame: str
    backbone: str
    configs: tuple[MethodSpec, ...]
    class_filter: str | None
    tunings: dict[int, Tuning] = field(default_factory=dict)  # config index → the parameter chosen on a split
    preset: Preset | None = None
    captioner: str | None = None
    score_size: int | None = None


def dataset_options(dataset: str, split: str | None, classes: str | None) -> dict[str, Any]:
    if dataset == "manifest":
        return {"class_names": tuple(c.strip() for c in (classes or "").split(",") if c.strip())}
    return {"split": split} if split else {}


def make_plan(request: EvaluationRequest) -> Plan:
    """Resolve the preset (if any) and the flags into one plan; ``ValueError`` on conflicts.

    A preset's configs run as ``--list-presets`` shows them: its parameters (with ``--param`` on
    top), never anything the plan adds. Without a preset, a config scored in the ``label`` frame
    whose parameters and method set no ``geometry`` segments the whole image (``aspect``)."""
    preset = get_preset(request.preset) if request.preset else None
    if preset:
        if request.dataset and not preset.accepts(request.dataset):
            raise ValueError(
                f"preset {preset.name} evaluates {preset.dataset}; --dataset {request.dataset} has other classes"
            )
        if request.methods or request.config:
            raise ValueError(
                "a preset fixes the method config: drop --methods/--config (or use --param to vary it, and lose the match)"
            )
        dataset = request.dataset or preset.dataset
        spec = preset.spec()
        if request.params:
            spec = MethodSpec(spec.method, {**spec.params, **request.params})
        configs = (spec,)
        frame = request.frame or preset.frame
        score_size = (
            request.score_size
            if request.score_size is not None
            else (preset.score_size if frame == preset.frame else None)
        )
        split = request.split or preset.split
        backbone = request.backbone or preset.backbone
        class_filter = request.class_filter if request.class_filter is not None else preset.class_filter
        if preset.candidates and not request.candidates:
            raise ValueError(
                f"preset {preset.name} prompts each image with the candidate classes its authors released: download "
                f"{preset.candidates.source} and give it with --candidates FILE"
            )
    else:
        dataset = request.dataset
        configs = method_specs(request)
        frame = request.frame or ("model" if dataset in MODEL_FRAME_DATASETS else "label")
        if frame == "label":  # scoring at the label's size segments the whole image unless a config says otherwise
            configs = tuple(
                s if "geometry" in s.params or "geometry" in get_method(s.method).extraction
                else MethodSpec(s.method, {**s.params, "geometry": "aspect"})
                for s in configs
            )  # fmt: skip
        score_size = request.score_size
        split = request.split
        backbone = request.backbone or DEFAULT_BACKBONE
        class_filter = request.class_filter
    if class_filter in ("", "none"):
        class_filter = None
    if request.candidates:
        class_filter = candidates_filter(request.class_filter, request.candidates)
    captioner = request.captioner or (
        preset.captioner if preset and any(s.resolved.extraction.prompting.needs_captioner for s in configs) else None
    )
    if score_size is not None and frame != "model":
        raise ValueError(f"--score-size samples the model frame: it needs --frame model (the frame is {frame})")
    takes_split, default = reader_splits(dataset)
    evaluated = split or default
    configs, tunings = plan_tunings(request, preset, configs, evaluated)
    if (split or request.tune_on) and not takes_split:
        flags = [flag for flag, given in (("--split", split), ("--tune-on", request.tune_on)) if given]
        raise ValueError(f"dataset {dataset} has no splits to choose from: drop {' and '.join(flags)}")
    for tuning in tunings.values():
        if tuning.split == evaluated and not tuning.oracle:
            source = "--tune-on" if request.tune_on else f"preset {preset.name} tunes on"
            raise ValueError(
                f"{source} {tuning.split!r}, the evaluated split: choose {tuning.param} on another split (--tune-on SPLIT), never on the test split"
            )
    return Plan(
        dataset, dataset_options(dataset, split, request.classes), frame, backbone, configs, class_filter, tunings,
        preset, captioner, score_size,
    )  # fmt: skip


def plan_tunings(
    request: EvaluationRequest, preset: Preset | None, configs: tuple[MethodSpec, ...], evaluated: str | None
) -> tuple[tuple[MethodSpec, ...], dict[int, Tuning]]:
    """The configs to evaluate and, by config index, the parameter each openvocab config chooses: the
    preset's tuning (an oracle one on the ``evaluated`` split), or with ``--tune-on`` the background
    threshold over DiffSegmenter's grid on that split. A preset with an oracle tuning and
    ``--tune-on`` evaluates its config twice: with the oracle threshold and with the held-out one."""
    tunings: dict[int, Tuning] = {}
    out: list[MethodSpec] = []
    for spec in configs:
        if spec.method != "openvocab" or not (request.tune_on or (preset and preset.tuning)):
            out.append(spec)
            continue
        base = preset.tuning if preset and preset.tuning else Tuning("background_threshold", BACKGROUND_TUNING, "")
        if base.param in spec.params:
            raise ValueError(
                f"{base.param} is set ({spec.params[base.param]}) and would be tuned too: drop it, or drop the tuning"
            )
        if base.oracle:
            tunings[len(out)] = Tuning(
                base.param, base.values, evaluated or "", base.protocol, base.metric, oracle=True
            )
            out.append(spec)
        if request.tune_on or not base.oracle:
            tunings[len(out)] = Tuning(
                base.param, base.values, request.tune_on or base.split, base.protocol, base.metric
            )
            out.append(spec)
    if request.tune_on and not tunings:
        raise ValueError("--tune-on chooses openvocab's background threshold; no openvocab config is evaluated")
    return tuple(out), tunings


def method_specs(request: EvaluationRequest) -> tuple[MethodSpec, ...]:
    """The run's method configs from ``--config`` or ``--methods`` + ``--param``."""
    if request.config:
        settings = load_run_file(request.config)
        others = sorted(set(settings) - {"configs"})
        if others:
            raise ValueError(
                f"--config {request.config}: an evaluation takes only `configs:` from a run file; give {others} as flags"
            )
        if not settings.get("configs"):
            raise ValueError(f"--config {request.config} has no `configs:` list")
        return tuple(settings["configs"])
    return tuple(
        MethodSpec(method.strip(), dict(request.params))
        for method in (request.methods or "diffseg").split(",")
        if method.strip()
    )
