"""Segmentation methods, by name. Each maps an ``AttentionBundle`` and a frozen config to
per-image ``MethodResult``s; ``run_method`` also names the segments when the bundle holds
class maps and the method does not label pixels itself."""

from __future__ import annotations

from typing import Any

from dsseg.model.extract import AttentionBundle
from dsseg.methods.base import Method, MethodResult
from dsseg.methods.diffseg import DiffSegConfig, segment_diffseg
from dsseg.methods.ncut import NCutConfig, segment_ncut
from dsseg.methods.openvocab import OpenVocabConfig, name_segments, segment_openvocab
from dsseg.model.prompts import DEFAULT_CLASS_WEIGHT, DEFAULT_TEMPLATE
from dsseg.timing import StageTimer

METHODS: dict[str, Method] = {
    "diffseg": Method(name="diffseg", config_class=DiffSegConfig, segment=segment_diffseg),
    # Diffusing, Walking and Cutting: self-attention after DDIM inversion for 10 of 50 steps
    "ncut": Method(name="ncut", config_class=NCutConfig, segment=segment_ncut, extraction={"noise": "ddim_inversion"}),
    # DiffSegmenter: one seeded noising to t = 100, one prompt per class, class tokens ×1.21
    "openvocab": Method(
        name="openvocab",
        config_class=OpenVocabConfig,
        segment=segment_openvocab,
        extraction={"noise": "noise", "timestep": 100, "class_template": DEFAULT_TEMPLATE, "class_weight": DEFAULT_CLASS_WEIGHT},
    ),
}


def get_method(name: str) -> Method:
    """The registered method called ``name``; a clear error lists the choices otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}") from None


def run_method(method: Method, bundle: AttentionBundle, config: Any, timer: StageTimer | None = None) -> list[MethodResult]:
    """``method`` on ``bundle``; segments left unnamed are named from the bundle's class maps."""
    results = method.segment(bundle, config, timer)
    if bundle.class_maps is None:
        return results
    timer = timer or StageTimer()
    with timer.stage("segment"):
        return [
            result if result.names is not None else name_segments(result, bundle.image(i), bundle.config.naming or "majority")
            for i, result in enumerate(results)
        ]


__all__ = ["METHODS", "Method", "MethodResult", "DiffSegConfig", "NCutConfig", "OpenVocabConfig", "get_method", "run_method"]
