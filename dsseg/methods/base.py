"""What every method returns, and how methods are registered."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

    from dsseg.model.extract import AttentionBundle
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
    """A segmentation method: its frozen config class, where its function lives (``function``:
    ``"module:name"``, imported with torch on first use, so configs resolve without it) and the
    extraction its paper uses (``extraction``: flat extraction parameters applied before the
    user's, e.g. DDIM inversion)."""

    name: str
    config_class: type
    function: str
    extraction: dict[str, Any] = field(default_factory=dict)

    @property
    def segment(self) -> Callable[[AttentionBundle, Any, StageTimer | None], list[MethodResult]]:
        """The method's function: ``(bundle, config, timer) → one MethodResult per image``."""
        module, name = self.function.split(":")
        return getattr(importlib.import_module(module), name)

    @property
    def param_names(self) -> frozenset[str]:
        """The parameters of the method's config."""
        return frozenset(f.name for f in fields(self.config_class))


T = TypeVar("T")


def memoised(bundle: AttentionBundle, key: Hashable, compute: Callable[[], T]) -> T:
    """``compute()``, kept in ``bundle.memo[key]`` when the bundle carries a memo (the explorer's cached
    bundles, re-segmented with new parameters); computed afresh when it carries none (jobs).

    ``key`` must name everything the value depends on besides the bundle (levels, weights, image index…).
    """
    if bundle.memo is None:
        return compute()
    if key not in bundle.memo:
        bundle.memo[key] = compute()
    return bundle.memo[key]
