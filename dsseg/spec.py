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

NamingMode = Literal["majority", "mean", "caption", "clip"]
NAMING_MODES: tuple[NamingMode, ...] = ("majority", "mean", "caption", "clip")
# The CLIP of DiffCut's released open-vocabulary evaluation: open_clip convnext_large_d_320, laion2b_s29b_b131k_ft_soup.
DEFAULT_CLIP_MODEL = "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"
CLIP_FEATURE_STRIDE = 32  # input pixels per cell of the ConvNeXt trunk's dense features


@dataclass(frozen=True)
class ClipNaming:
    """What ``naming="clip"`` names segments with (``dsseg.methods.clip_naming``): the candidate
    ``classes`` (or a shipped ``vocabulary``; per-image lists given at call time replace them),
    the CLIP (``clip_model``: a hub id or a local folder of an open_clip ConvNeXt CLIP, or
    ``tiny-clip``), the size CLIP reads the image at (``clip_image_size``: the longer side; None,
    the model input's, as DiffCut's released VOC and Context runs; 2048 for its COCO-Object run)
    and whether ``background`` is a class beside the candidates (``clip_background``, as released).
    The classes are not put in any prompt: the UNet runs as it would without them."""

    classes: tuple[str, ...] = ()
    vocabulary: str | None = None
    clip_model: str = DEFAULT_CLIP_MODEL
    clip_image_size: int | None = None
    clip_background: bool = True

    def __post_init__(self) -> None:
        from dsseg.model.config import candidate_classes

        object.__setattr__(self, "classes", candidate_classes(self.classes, self.vocabulary))
        if not isinstance(self.clip_model, str) or not self.clip_model.strip():
            raise ConfigError("clip_model", f"expects a hub id, a local folder or 'tiny-clip'; got {self.clip_model!r}")
        size = self.clip_image_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < CLIP_FEATURE_STRIDE):
            raise ConfigError(
                "clip_image_size", f"must be a whole number of pixels ≥ {CLIP_FEATURE_STRIDE} or None; got {size!r}"
            )

    def flat(self) -> dict[str, Any]:
        """The settings by name, as config ids hash them."""
        return dataclasses.asdict(self)


CLIP_PARAMS = frozenset(f.name for f in dataclasses.fields(ClipNaming)) - {"classes", "vocabulary"}


@dataclass(frozen=True)
class SegmentConfig:
    """One resolved method config: ``method`` (its name), ``extraction``, ``params`` (the method's
    frozen config, e.g. ``DiffSegConfig``) and ``naming`` (how class maps name the segments of a
    method that does not label pixels itself: ``majority`` of pixel votes or ``mean`` score;
    ``caption``: the nouns of each image's caption, prompted with that caption, by ``mean`` score
    as DiffSeg's demo votes; ``clip``: a CLIP among the candidate classes, as DiffCut's released
    open-vocabulary evaluation, with ``clip`` its settings; None: not named)."""

    method: str
    extraction: ExtractConfig
    params: Any
    naming: NamingMode | None = None
    clip: ClipNaming | None = None

    def flat_extraction(self) -> dict[str, Any]:
        """The extraction parameters by name, with ``naming`` (and ``clip``, its settings, under
        ``naming="clip"``): the form config ids hash."""
        flat = {**self.extraction.flat(), "naming": self.naming}
        return flat if self.clip is None else {**flat, "clip": self.clip.flat()}


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
    clip = clip_naming(method, registered, naming, params)  # takes the classes out of params: no prompt names them
    extract_params = {k: v for k, v in params.items() if k in EXTRACT_PARAMS}
    method_params = {k: v for k, v in params.items() if k not in EXTRACT_PARAMS}
    unknown = sorted(set(method_params) - registered.param_names)
    if unknown:
        raise ConfigError(
            unknown[0],
            f"is not a parameter of {method!r}; its parameters: {sorted(registered.param_names)}; "
            f"extraction parameters: {sorted(EXTRACT_PARAMS | {'naming'})}; naming='clip' parameters: {sorted(CLIP_PARAMS)}",
        )
    check_param_types(registered.config_class, method_params)
    method_config = registered.config_class(**method_params)
    check_features_and_attention(method, registered, {**extract_params, "naming": None if clip else naming})
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
    if naming not in (None, "clip") and not prompting.joint_names:
        prompting = dataclasses.replace(prompting, joint_names=True, caption_names=naming == "caption")
        extraction = dataclasses.replace(extraction, prompting=prompting)
    if levels is not None:
        check_resolutions(levels, extraction.preparation)
        captured = extraction.capture.capture_resolutions
        if captured is not None and not set(levels) <= set(captured):
            raise ConfigError(
                "capture_resolutions", f"{list(captured)} leave out levels the method reads: {list(levels)}"
            )
    return SegmentConfig(method, extraction, method_config, naming, clip)


def clip_naming(method: str, registered, naming: str | None, params: dict[str, Any]) -> ClipNaming | None:
    """``naming="clip"``'s settings, taken out of ``params`` (its classes and vocabulary with them,
    so that no prompt names them), or None for other namings; ``ConfigError`` for its parameters
    given without it, and for methods or settings it does not go with."""
    given = sorted(CLIP_PARAMS & set(params))
    if naming != "clip":
        if given:
            raise ConfigError(given[0], "is a parameter of naming='clip': add naming='clip' or leave it out")
        return None
    if registered.extraction.get("class_template") is not None:
        raise ConfigError(
            "naming",
            f"'clip' names the segments of diffseg, ncut, diffcut and seg4diff; {method} labels pixels by class itself",
        )
    for name in ("class_template", "descriptors", "spellings"):
        if params.get(name):
            raise ConfigError(name, "belongs to class prompts; naming='clip' prompts no classes: leave it out")
    own = {name: params.pop(name) for name in ("classes", "vocabulary", *given) if name in params}
    check_param_types(ClipNaming, {k: v for k, v in own.items() if k not in ("classes", "vocabulary")})
    return ClipNaming(**own)


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
                named[0],
                f"{method} reads features, not attention, and names segments only with CLIP: leave out {named[0]}, "
                "or name them with naming='clip'",
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


__all__ = [
    "CLIP_PARAMS",
    "DEFAULT_CLIP_MODEL",
    "NAMING_MODES",
    "ClipNaming",
    "MethodSpec",
    "NamingMode",
    "SegmentConfig",
    "resolve",
]
