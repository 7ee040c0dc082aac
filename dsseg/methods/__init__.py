"""Segmentation methods, by name. Each maps an ``AttentionBundle`` and a frozen config to
per-image ``MethodResult``s; ``name_results`` names the segments when the bundle holds class maps
and the method does not label pixels itself. The registry holds the methods' configs
(``dsseg.methods.configs``, torch-free); a method's module (and torch) loads when it first runs."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from dsseg.model.config import DEFAULT_CLASS_WEIGHT, DEFAULT_TEMPLATE

if TYPE_CHECKING:
    from dsseg.methods.base import Method, MethodResult
    from dsseg.model.extract import AttentionBundle
    from dsseg.timing import StageTimer

METHOD_NAMES = ("diffseg", "ncut", "openvocab", "diffcut", "seg4diff")


@functools.cache
def _registry() -> dict[str, Method]:
    from dsseg.methods.base import Method
    from dsseg.methods.configs import DiffCutConfig, DiffSegConfig, NCutConfig, OpenVocabConfig, Seg4DiffConfig

    return {
        "diffseg": Method("diffseg", DiffSegConfig, "dsseg.methods.diffseg:segment_diffseg"),
        # Diffusing, Walking and Cutting: self-attention after DDIM inversion for 10 of 50 steps
        "ncut": Method("ncut", NCutConfig, "dsseg.methods.ncut:segment_ncut", extraction={"noise": "ddim_inversion"}),
        # DiffSegmenter as its released VOC code: one seeded noising to t = 100, one prompt per class
        # ("a photograph of {class}"), the name weighted as Compel's "name++" (1.21), its first token read
        "openvocab": Method(
            "openvocab",
            OpenVocabConfig,
            "dsseg.methods.openvocab:segment_openvocab",
            extraction={
                "noise": "noise",
                "timestep": 100,
                "class_template": DEFAULT_TEMPLATE,
                "class_weight": DEFAULT_CLASS_WEIGHT,
                "class_weighting": "compel",
                "class_tokens": "first",
            },
        ),
        # DiffCut: the last down-path self-attention layer's output, t = 50, seeded noise, 1024² squashed
        "diffcut": Method(
            "diffcut",
            DiffCutConfig,
            "dsseg.methods.diffcut:segment_diffcut",
            extraction={
                "noise": "noise",
                "timestep": 50,
                "feature_layer": "down:-1",
                "self_attention": False,
                "geometry": "squash",
                "image_size": 1024,
            },
        ),
        # Seg4Diff as released on SD3-medium: 1024² squashed, flow-matching noise at timesteps[-8] of 28
        # (σ ≈ 0.515), block 9's image→text joint attention, class names joined by spaces when given
        "seg4diff": Method(
            "seg4diff",
            Seg4DiffConfig,
            "dsseg.methods.seg4diff:segment_seg4diff",
            extraction={
                "noise": "flow",
                "num_inference_steps": 28,
                "flow_step": -8,
                "layers": (9,),
                "self_attention": False,
                "cross_attention": True,
                "geometry": "squash",
                "image_size": 1024,
                "joint_prefix": "",
                "joint_separator": " ",
            },
        ),
    }


def get_method(name: str) -> Method:
    """The registered method called ``name``; a clear error lists the choices otherwise."""
    if name not in METHOD_NAMES:
        from dsseg.errors import ConfigError

        raise ConfigError("method", f"unknown method {name!r}; available: {list(METHOD_NAMES)}")
    return _registry()[name]


def name_results(
    results: list[MethodResult], bundle: AttentionBundle, timer: StageTimer | None = None, naming: str | None = None
) -> list[MethodResult]:
    """Per image of ``bundle``, its result with unnamed segments named from the bundle's class maps
    (unchanged when the bundle holds none). ``naming``: ``majority`` or ``mean`` (default majority;
    ``caption`` votes by ``mean``). ``dsseg.segmenter`` runs a method, then this (steps 4 and 5)."""
    from dsseg.methods.openvocab import name_segments
    from dsseg.timing import StageTimer

    if bundle.class_attention is None:
        return results
    timer = timer or StageTimer()
    mode = "mean" if naming == "caption" else naming or "majority"
    with timer.stage("segment"):
        return [
            result if result.names is not None else name_segments(result, bundle.image(i), mode)
            for i, result in enumerate(results)
        ]


__all__ = ["METHOD_NAMES", "get_method", "name_results"]
