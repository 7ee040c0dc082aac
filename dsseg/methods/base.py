"""What every method returns, and how methods are registered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from dsseg.model.extract import AttentionBundle, ExtractConfig
from dsseg.timing import StageTimer


@dataclass(frozen=True)
class MethodResult:
    """One image's segmentation in the model-input frame.

    ``labels``: (h, w) int64 segment ids 0..S−1 at the model input's pixel size (h, w).
    ``names``/``scores``/``parents``: optional per-segment label, score and parent segment id,
    indexed by segment id (filled by methods that name segments or build hierarchies).
    ``background``: id 0 is the background class, kept in ``names`` even where no pixel takes it.
    """

    labels: torch.Tensor
    names: list[str | None] | None = None
    scores: list[float | None] | None = None
    parents: list[int | None] | None = None
    background: bool = False


@dataclass(frozen=True)
class Method:
    """A segmentation method: its config class, what it needs extracted, and its function.

    ``extraction``: the ``ExtractConfig`` fields its paper sets (e.g. DDIM inversion), applied
    before the user's extraction parameters.
    """

    name: str
    config_class: type
    segment: Callable[[AttentionBundle, Any, StageTimer | None], list[MethodResult]]
    needs_cross_attention: bool = False
    extraction: dict[str, Any] = field(default_factory=dict)

    @property
    def param_names(self) -> frozenset[str]:
        """The parameters of the method's config."""
        return frozenset(f.name for f in fields(self.config_class))

    def make_config(self, params: dict[str, Any]) -> Any:
        """The method's frozen config from keyword parameters, with a clear error for unknown names."""
        unknown = sorted(set(params) - self.param_names)
        if unknown:
            raise TypeError(f"unknown parameter(s) {unknown} for method {self.name!r}; valid: {sorted(self.param_names)}")
        return self.config_class(**params)

    def extraction_defaults(self) -> ExtractConfig:
        """The extraction the method's paper uses."""
        return replace(ExtractConfig(cross_attention=self.needs_cross_attention), **self.extraction)
