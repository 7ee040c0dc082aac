"""Segmentation methods, by name. Each maps an ``AttentionBundle`` and a frozen config to
per-image ``MethodResult``s."""

from __future__ import annotations

from dsseg.methods.base import Method, MethodResult
from dsseg.methods.diffseg import DiffSegConfig, segment_diffseg

METHODS: dict[str, Method] = {
    "diffseg": Method(name="diffseg", config_class=DiffSegConfig, segment=segment_diffseg),
}


def get_method(name: str) -> Method:
    """The registered method called ``name``; a clear error lists the choices otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}") from None


__all__ = ["METHODS", "Method", "MethodResult", "DiffSegConfig", "get_method"]
