"""A method config as users write it, and resolved once into typed configs.

``MethodSpec("ncut", {"power": 2, "timestep": 100})`` is what a command line, a run file or
keyword arguments give: a method name and flat parameters. ``MethodSpec.resolved`` is its
``SegmentConfig``: the extraction (``dsseg.model.config.ExtractConfig``: the method paper's
extraction, then the user's parameters routed to the configs that own them), the method's own
frozen config, and how its segments are named. Resolution happens once per spec; unknown
names and bad values raise ``ConfigError`` naming the parameter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from dsseg.errors import ConfigError
from dsseg.model.config import EXTRACT_PARAMS, ExtractConfig, check_resolutions
from dsseg.params import check_param_types

NamingMode = Literal["majority", "mean", "caption"]
NAMING_MODES: tuple[NamingMode, ...] = ("majority", "mean", "caption")


@dataclass(frozen=True)
class SegmentConfig:
    """One resolved method config: ``method`` (its name), ``extraction``, ``params`` (the method's
    frozen config, e.g. ``DiffSegConfig``) and ``naming`` (how class maps name the segments of a
    method that does not label pixels itself: ``majority`` of pixel votes or ``mean`` score;
    ``caption``: the nouns of each image's caption, prompted with that caption, by ``mean`` score
    as DiffSeg's demo votes; None: not named)."""

    method: str
    extraction: ExtractConfig
    params: Any
    naming: NamingMode | None = None

    def flat_extraction(self) -> dict[str, Any]:
        """The extraction parameters by name, with ``naming``: the form config ids hash."""
        return {**self.extraction.flat(), "naming": self.naming}


def resolve(method: str, params: Mapping[str, Any]) -> SegmentConfig:
    """``method`` with flat ``params`` → ``SegmentConfig`` (see the module docstring).

    Defaults the papers fix: the method's extraction (e.g. DDIM inversion for ncut); the levels it
    aggregates are the levels captured unless ``capture_resolutions`` says otherwise; classes named
    without a template name the segments by ``majority``.
    """
    from dsseg.methods import get_method

    registered = get_method(method)
    params = dict(params)
    naming = params.pop("naming", None)
    extract_params = {k: v for k, v in params.items() if k in EXTRACT_PARAMS}
    method_params = {k: v for k, v in params.items() if k not in EXTRACT_PARAMS}
    unknown = sorted(set(method_params) - registered.param_names)
    if unknown:
        raise ConfigError(
            unknown[0],
            f"is not a parameter of {method!r}; its parameters: {sorted(registered.param_names)}; "
            f"extraction parameters: {sorted(EXTRACT_PARAMS | {'naming'})}",
        )
    check_param_types(registered.config_class, method_params)
    method_config = registered.config_class(**method_params)
    check_features_and_attention(method, registered, {**extract_params, "naming": naming})
    levels = getattr(method_config, "resolutions", None)
    if levels is not None and "capture_resolutions" not in extract_params:
        extract_params["capture_resolutions"] = levels  # capture only the levels the method aggregates
    extraction = ExtractConfig.from_params(extract_params, ExtractConfig.from_params(registered.extraction))
    prompting = extraction.prompting
    if naming is None and prompting.classes and prompting.class_template is None:
        naming = "majority"  # classes without a template name the segments
    if naming is not None and naming not in NAMING_MODES:
        raise ConfigError("naming", f"must be one of {NAMING_MODES} or None; got {naming!r}")
    if naming == "caption":
        check_caption_naming(method, prompting)
    if naming is not None and not prompting.joint_names:
        prompting = dataclasses.replace(prompting, joint_names=True, caption_names=naming == "caption")
        extraction = dataclasses.replace(extraction, prompting=prompting)
    if levels is not None:
        check_resolutions(levels, extraction.preparation)
        captured = extraction.capture.capture_resolutions
        if captured is not None and not set(levels) <= set(captured):
            raise ConfigError(
                "capture_resolutions", f"{list(captured)} leave out levels the method reads: {list(levels)}"
            )
    return SegmentConfig(method, extraction, method_config, naming)


def check_features_and_attention(method: str, registered, extract_params: Mapping[str, Any]) -> None:
    """Raise a ``ConfigError`` where a config would capture what its method does not read: no
    attention maps for a method that reads them, no features or class names for one that reads features."""
    reads_features = registered.extraction.get("feature_layer") is not None
    if not reads_features and extract_params.get("self_attention") is False:
        raise ConfigError("self_attention", f"{method} reads attention maps: leave self_attention on")
    if reads_features:
        if "feature_layer" in extract_params and extract_params["feature_layer"] is None:
            raise ConfigError("feature_layer", f"{method} reads one layer's features: give BLOCK:INDEX, e.g. 'down:-1'")
        named = [k for k in ("classes", "vocabulary", "class_template", "naming") if extract_params.get(k)]
        if named:
            raise ConfigError(
                named[0], f"{method} reads features, not attention, and does not name segments: leave out {named[0]}"
            )


def check_caption_naming(method: str, prompting) -> None:
    """Raise a ``ConfigError`` where ``naming="caption"`` meets settings it replaces."""
    if prompting.class_template is not None:
        raise ConfigError(
            "naming",
            f"'caption' names the segments of diffseg and ncut; {method} labels pixels by class: use "
            "descriptors='caption' (augmented prompts) or the class filter 'caption'",
        )
    if prompting.classes:
        raise ConfigError(
            "naming", "'caption' takes the names from each image's caption: leave out classes and vocabulary"
        )
    if prompting.prompt:
        raise ConfigError("naming", "'caption' prompts each image with its caption: leave out prompt")


@dataclass(frozen=True)
class MethodSpec:
    """One method config of a run: a method name and its flat parameters (see the module
    docstring); validated at construction, resolved once (``resolved``)."""

    method: str = "diffseg"
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "params", {k: tuple(v) if isinstance(v, list) else v for k, v in dict(self.params).items()}
        )
        _ = self.resolved  # validates the method name and parameters

    @cached_property
    def resolved(self) -> SegmentConfig:
        return resolve(self.method, self.params)

    @classmethod
    def from_mapping(cls, entry: Mapping[str, Any]) -> MethodSpec:
        """``{"method": "diffseg", "kl_threshold": 0.9, ...}`` (a run file's ``configs`` entry)."""
        entry = dict(entry)
        method = entry.pop("method", "diffseg")
        return cls(method, entry)

    def with_params(self, **params: Any) -> MethodSpec:
        """This spec with ``params`` added or replaced."""
        return MethodSpec(self.method, {**self.params, **params})


__all__ = ["NAMING_MODES", "MethodSpec", "NamingMode", "SegmentConfig", "resolve"]
