"""What a pseudo-label run is set to: the user's ``PseudoLabelRequest`` and the published presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dsseg.errors import ConfigError
from dsseg.evaluation.preset import BLIP_LARGE, SD15
from dsseg.evaluation.presets import DIFFSEGMENTER_PARAMS
from dsseg.model.config import DEFAULT_BACKBONE
from dsseg.settings import RunSettings

FORMATS = ("voc", "coco")
AGNOSTIC_METHODS = ("diffseg", "ncut")
FROM_PRESET = "preset"  # a refinement setting not given: the preset's, else dsseg's default


@dataclass(frozen=True)
class PseudoLabelPreset:
    """A published pseudo-label setting: the weak job's ``params`` (``--param`` still overrides, and so
    do ``--ignore-margin``, ``--pamr-iterations`` and ``--crf-iterations`` over its ``refinement``),
    its ``backbone`` and ``captioner`` (unless given), and the ``published`` quality, reported beside ours."""

    params: dict[str, Any]
    backbone: str
    published: dict[str, float]
    note: str
    refinement: dict[str, Any]
    captioner: str | None = None


# The weak job's refinement without a preset: PAMR and an ignore band (dsseg's choice for training labels).
DEFAULT_REFINEMENT = {"ignore_margin": 0.1, "pamr_iterations": 10, "crf_iterations": 0}
PSEUDO_LABEL_PRESETS = {
    "diffsegmenter-voc2012-train": PseudoLabelPreset(
        params={**{k: v for k, v in DIFFSEGMENTER_PARAMS.items() if k != "timestep"}, "timesteps": (1, 50, 100, 150)},
        backbone=SD15,
        published={"miou": 70.5},
        note="DiffSegmenter's VOC train pseudo-labels (70.5 mIoU; 65.3 without the BLIP prompts and '++'): the "
        "released VOC prompts (BLIP-large continuations, Compel's '++', the authors' spellings), attention averaged "
        "over t = 1, 50, 100, 150 as the paper (its released ptp_stable_best.py runs times = [100] alone: --param "
        "timestep=100 follows it), no PAMR and no ignore band, a dense CRF (10 mean-field steps) as the paper "
        "describes; the CRF's kernel settings are not published: dsseg's (DeepLab's) are used",
        refinement={"ignore_margin": None, "pamr_iterations": 0, "crf_iterations": 10},
        captioner=BLIP_LARGE,
    )
}


@dataclass(frozen=True, kw_only=True)
class PseudoLabelRequest(RunSettings):
    """One pseudo-label run as the user asked for it (``dsseg pseudolabel``'s flags by the same
    names; ``params``: the ``--param`` values; ``copy_images``: not ``--no-images``). Exactly one
    source: ``input`` (manifest or image folder), ``voc_root`` (+ ``split``) or ``coco_instances``
    (+ ``coco_images``). ``ignore_margin``, ``pamr_iterations`` and ``crf_iterations`` left at
    ``FROM_PRESET`` take the preset's refinement, else ``DEFAULT_REFINEMENT``; ``ignore_margin``
    None: no ignore band (the weak job's method checks their values). Checked at construction;
    ``resolved()`` fills in the preset's values."""

    output: str
    input: str | None = None
    voc_root: str | None = None
    coco_instances: str | None = None
    coco_images: str | None = None
    split: str = "train"
    formats: tuple[str, ...] = FORMATS
    class_list: str | None = None
    ignore_margin: float | str | None = FROM_PRESET
    background_threshold: float | None = None
    pamr_iterations: int | str = FROM_PRESET
    crf_iterations: int | str = FROM_PRESET
    captioner: str | None = None
    preset: str | None = None
    agnostic_method: str = "diffseg"
    min_area: float = 0.01
    max_masks: int = 20
    keep_border_background: bool = False
    copy_images: bool = True
    gt_dir: str | None = None
    gt_classes: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    shard: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        sources = [name for name in ("input", "voc_root", "coco_instances") if getattr(self, name) is not None]
        if len(sources) != 1:
            raise ConfigError(
                sources[1] if len(sources) > 1 else "input", "give exactly one of --input, --voc-root, --coco-instances"
            )
        if self.coco_instances and not self.coco_images:
            raise ConfigError("coco_images", "required with --coco-instances")
        if not self.formats or set(self.formats) - set(FORMATS):
            raise ConfigError(
                "formats", f"takes a comma-separated subset of {', '.join(FORMATS)}; got {','.join(self.formats)!r}"
            )
        if self.gt_dir and "voc" not in self.formats:
            raise ConfigError("gt_dir", "compares the VOC label PNGs: include voc in --format")
        if self.gt_classes and not self.gt_dir:
            raise ConfigError("gt_classes", "names the values of --gt-dir's PNGs: give --gt-dir too")
        if self.preset is not None and self.preset not in PSEUDO_LABEL_PRESETS:
            raise ConfigError("preset", f"unknown preset {self.preset!r}; available: {sorted(PSEUDO_LABEL_PRESETS)}")
        if self.agnostic_method not in AGNOSTIC_METHODS:
            raise ConfigError("agnostic_method", f"must be one of {AGNOSTIC_METHODS}; got {self.agnostic_method!r}")
        if not 0 <= self.min_area < 1:
            raise ConfigError("min_area", f"is a fraction of the image in [0, 1); got {self.min_area}")
        if self.max_masks < 1:
            raise ConfigError("max_masks", f"must be ≥ 1; got {self.max_masks}")

    @property
    def preset_setting(self) -> PseudoLabelPreset | None:
        return PSEUDO_LABEL_PRESETS.get(self.preset) if self.preset else None

    def resolved(self) -> PseudoLabelRequest:
        """This request with the backbone, captioner and refinement not given taken from the
        preset (else dsseg's defaults)."""
        preset = self.preset_setting
        refinement = preset.refinement if preset else DEFAULT_REFINEMENT
        chosen = {
            name: refinement[name] if getattr(self, name) == FROM_PRESET else getattr(self, name)
            for name in ("ignore_margin", "pamr_iterations", "crf_iterations")
        }
        return dataclasses.replace(
            self,
            backbone=self.backbone or (preset.backbone if preset else DEFAULT_BACKBONE),
            captioner=self.captioner or (preset.captioner if preset else None),
            **chosen,
        )
