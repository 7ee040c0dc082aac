"""One benchmark preset: a published table row and everything its number depends on
(``Preset``), and the key that says whether a run measures the same thing (``settings_key``).
The presets themselves: ``dsseg.evaluation.presets``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dsseg.model.config import DEFAULT_TIMESTEP, RUNTIME_FIELDS
from dsseg.model.filter_specs import CANDIDATES_PREFIX

SD14 = "CompVis/stable-diffusion-v1-4"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # the hub mirror of runwayml/stable-diffusion-v1-5
SSD1B = "segmind/SSD-1B"  # DiffCut's backbone: a distilled SDXL
SD3_MEDIUM = "stabilityai/stable-diffusion-3-medium-diffusers"  # Seg4Diff's default backbone

BLIP_LARGE = "Salesforce/blip-image-captioning-large"  # the released code's conditional captioner

# Other names of the presets' backbones and captioners.
BACKBONE_ALIASES = {"runwayml/stable-diffusion-v1-5": SD15, "blip/blip-image-captioning-large": BLIP_LARGE}


@dataclass(frozen=True)
class ReleasedFile:
    """A file a preset reads that its authors released: where to get it and its sha256 (a run matches
    the preset only with these bytes)."""

    source: str
    sha256: str


@dataclass(frozen=True)
class Tuning:
    """A parameter chosen over ``values`` (the grid) on a split: the default ``split`` to choose on,
    another than the evaluated one; or, with ``oracle``, the evaluated split itself, as a paper did
    (the report says so). The highest ``metric`` wins (ties: the lower value)."""

    param: str
    values: tuple[float, ...]
    split: str
    protocol: str = "semantic"
    metric: str = "miou"
    oracle: bool = False

    @property
    def how(self) -> str:
        """``oracle`` (chosen on the evaluated split) or ``split`` (on another): what a match compares."""
        return "oracle" if self.oracle else "split"


@dataclass(frozen=True)
class Preset:
    """One published table row (see the module docstring).

    ``published``: the row's scores (``acc``/``f1``/``miou``, percent) under ``protocol``; empty
    when the number is not recorded in our references. ``params``: method and extraction
    parameters (``MethodSpec`` form), the geometry always among them, so that the run is what
    ``describe`` lists. ``frame``: ``model`` (DiffSeg protocol) or ``label``; ``score_size``: the
    model frame scored on a grid of that longer side (DiffCut's 128²; None: its own pixels).
    ``readers``: other dataset readers with the same classes that may stand in for ``dataset``.
    ``candidates``: the released per-image class lists the run must read (``--candidates FILE``);
    ``captioner``: the captioner its prompts need (``descriptors="caption"``).
    """

    name: str
    paper: str
    row: str
    dataset: str
    protocol: str
    published: Mapping[str, float]
    backbone: str
    method: str
    params: Mapping[str, Any]
    frame: str = "model"
    split: str | None = None
    readers: tuple[str, ...] = ()
    class_filter: str | None = None
    tuning: Tuning | None = None
    choices: tuple[str, ...] = ()
    candidates: ReleasedFile | None = None
    captioner: str | None = None
    score_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", {k: tuple(v) if isinstance(v, list) else v for k, v in self.params.items()})
        if "geometry" not in self.params:
            raise ValueError(f"preset {self.name} must name its geometry: the run must be what it lists")
        if self.score_size is not None and self.frame != "model":
            raise ValueError(f"preset {self.name}: a score_size samples the model frame")

    def accepts(self, dataset: str) -> bool:
        return dataset == self.dataset or dataset in self.readers

    def spec(self):
        from dsseg.spec import MethodSpec

        return MethodSpec(self.method, dict(self.params))

    def key(self) -> str:
        class_filter = f"{CANDIDATES_PREFIX}sha256={self.candidates.sha256}" if self.candidates else self.class_filter
        tuned = self.tuning.param if self.tuning else None
        return settings_key(self.spec(), self.frame, class_filter, tuned, self.score_size, self.captioner)

    def describe(self) -> list[str]:
        """Lines for ``--list-presets`` and the report: the row, the paper, the dataset, every setting."""
        resolved = self.spec().resolved
        scores = ", ".join(f"{k} {v:.1f}" for k, v in self.published.items()) or "not recorded in our references"
        lines = [
            f"{self.name}: {self.row}",
            f"  paper: {self.paper}",
            f"  dataset: {self.dataset}{f' (split {self.split})' if self.split else ''}"
            + (f"; also read as {', '.join(self.readers)}" if self.readers else ""),
            f"  published ({self.protocol}): {scores}",
            f"  backbone: {self.backbone}; frame: {frame_text(self.frame, self.score_size)}"
            + (f"; class filter: {self.class_filter}" if self.class_filter else "")
            + (f"; captioner: {self.captioner}" if self.captioner else ""),
            f"  method: {self.method} {_fields(resolved.params, exclude={self.tuning.param} if self.tuning else set())}",
            f"  extraction: {', '.join(f'{k}={v!r}' for k, v in resolved.flat_extraction().items() if k not in RUNTIME_FIELDS)}",
        ]
        if self.candidates:
            lines.append(
                f"  candidates: --candidates FILE, the released {self.candidates.source} (sha256 {self.candidates.sha256[:12]}…)"
            )
        if self.tuning:
            grid, tuning = self.tuning.values, self.tuning
            where = (
                "on the evaluated split itself (oracle threshold, as the paper; --tune-on SPLIT adds an honest one)"
                if tuning.oracle
                else f"on split {tuning.split!r} (--tune-on)"
            )
            lines.append(
                f"  tuned: {tuning.param} over {len(grid)} values {grid[0]:g}…{grid[-1]:g} {where}, "
                f"best {tuning.protocol} {tuning.metric}"
            )
        lines += [f"  choice: {choice}" for choice in self.choices]
        return lines


def frame_text(frame: str, score_size: int | None = None) -> str:
    """``model``, ``label`` or ``model, scored at 128²``."""
    return frame if score_size is None else f"{frame}, scored at {score_size}²"


def _fields(config: Any, exclude: set[str] = frozenset()) -> str:
    return ", ".join(
        f"{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config) if f.name not in exclude
    )


def filter_identity(class_filter: str | None) -> str | None:
    """What a class filter spec measures with: ``candidates:FILE`` by the file's sha256 (not its
    path), any other by its spec."""
    if class_filter and class_filter.startswith(CANDIDATES_PREFIX) and "sha256=" not in class_filter:
        from dsseg.model.candidates import file_digest

        return f"{CANDIDATES_PREFIX}sha256={file_digest(class_filter.removeprefix(CANDIDATES_PREFIX))}"
    return class_filter


def settings_key(
    spec,
    frame: str,
    class_filter: str | None = None,
    tuned: str | None = None,
    score_size: int | None = None,
    captioner: str | None = None,
) -> str:
    """What a published number depends on, beside dataset and backbone: the resolved extraction and
    method configs (runtime-only fields and a ``tuned`` parameter left out), the frame and its
    score size, for configs prompted with classes the class filter (a candidate file by its
    bytes), and for configs that read captions the captioner. Equal keys: the same measurement."""
    resolved = spec.resolved
    extraction = {k: v for k, v in resolved.flat_extraction().items() if k not in RUNTIME_FIELDS}
    if extraction["noise"] != "ddim_inversion" and extraction["timestep"] is None:
        extraction["timestep"] = DEFAULT_TIMESTEP  # the step it runs at, said or not
    key = {
        "method": spec.method,
        "extract": extraction,
        "params": {k: v for k, v in dataclasses.asdict(resolved.params).items() if k != tuned},
        "frame": frame,
        "class_filter": filter_identity(class_filter) if resolved.extraction.uses_classes else None,
    }
    if score_size is not None:
        key["score_size"] = score_size
    if resolved.extraction.prompting.needs_captioner:
        key["captioner"] = BACKBONE_ALIASES.get(captioner, captioner)
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
