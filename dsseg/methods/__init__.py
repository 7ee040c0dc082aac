"""Segmentation methods, by name. Each maps an ``AttentionBundle`` and a frozen config to
per-image ``MethodResult``s."""

from __future__ import annotations

from dsseg.methods.base import Method, MethodResult
from dsseg.methods.diffseg import DiffSegConfig, segment_diffseg
from dsseg.methods.ncut import NCutConfig, segment_ncut

METHODS: dict[str, Method] = {
    "diffseg": Method(name="diffseg", config_class=DiffSegConfig, segment=segment_diffseg),
    # Diffusing, Walking and Cutting: self-attention after DDIM inversion for 10 of 50 steps
    "ncut": Method(name="ncut", config_class=NCutConfig, segment=segment_ncut, extraction={"noise": "ddim_inversion"}),
}


def get_method(name: str) -> Method:
    """The registered method called ``name``; a clear error lists the choices otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}") from None


__all__ = ["METHODS", "Method", "MethodResult", "DiffSegConfig", "NCutConfig", "get_method"]
