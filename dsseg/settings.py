"""Settings that several commands' typed requests share, as frozen keyword-only dataclasses to
inherit from (each request adds its own fields)."""

from __future__ import annotations

from dataclasses import dataclass

from dsseg.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """Which model runs, and where: ``backbone`` (None: the preset's or the default), ``device``
    and ``dtype`` (``auto`` or a name), ``offline`` (never contact the hub), ``compile``."""

    backbone: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    offline: bool = False
    compile: bool = False


@dataclass(frozen=True, kw_only=True)
class RunSettings(ModelSettings):
    """How a Ray run segments: ``batch_size`` images per model call (or ``auto``), ``num_workers``
    model actors, only the first ``limit`` images (None: all)."""

    batch_size: int | str = 4
    num_workers: int = 1
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError("num_workers", f"must be ≥ 1; got {self.num_workers}")
        check_counts(self, "limit")


def check_counts(settings: object, *names: str) -> None:
    """``ConfigError`` unless each of ``names`` on ``settings`` is None or an integer ≥ 1."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(name, f"must be an integer ≥ 1; got {value!r}")
