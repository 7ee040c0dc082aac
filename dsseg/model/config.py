"""How attention is extracted from an image, as four small frozen configs, one per concern:

- ``Preparation``: the model input (size, crop or resize, antialiasing);
- ``Noising``: what reaches the UNet step (clean latent, seeded noise, DDIM inversion);
- ``Capture``: which attention is kept (blocks, self-attention levels, cross-attention);
- ``Prompting``: the text the UNet is conditioned on (a prompt, class names, templates).

``ExtractConfig`` holds one of each. Every parameter name belongs to exactly one config
(``PARTS``), so a flat ``{name: value}`` from a command line, a run file or keyword
arguments is routed by asking the configs, not by lists kept elsewhere. This module imports no
model code: configs validate in milliseconds, before any model loads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from dsseg.errors import ConfigError
from dsseg.io.images import GEOMETRIES, SIDE_MULTIPLE, Geometry, GeometryMode, prepare_image
from dsseg.model.vocabularies import get_spellings, get_vocabulary
from dsseg.params import ADDED, DERIVED, OWN_TYPE_CHECK, added_at_default, check_param_types, param_names

DEFAULT_BACKBONE = "CompVis/stable-diffusion-v1-4"  # Stable Diffusion v1.4, the DiffSeg and DWC papers' model
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"  # the DiffSeg demo's BLIP
Block = Literal["down", "mid", "up"]
BLOCKS: tuple[Block, ...] = ("down", "mid", "up")
MMDIT_BLOCK = "layer"  # the AttentionLayer block (and feature_layer prefix) of an MM-DiT transformer block
UNET_LEVELS = 4  # attention resolutions of the SD UNet: the latent and three halvings
LATENT_FACTOR = 8  # image pixels per latent cell in every SD VAE
MMDIT_PATCH = 2  # latent cells per token side in SD3 / SD3.5 (transformer patch_size)
NoiseMode = Literal["none", "noise", "ddim_inversion", "flow"]
NOISE_MODES: tuple[NoiseMode, ...] = ("none", "noise", "ddim_inversion", "flow")
DDPM_NOISE_MODES: tuple[NoiseMode, ...] = ("noise", "ddim_inversion")  # read a UNet's DDPM schedule
DEFAULT_TIMESTEP = 300
CLASS_PLACEHOLDER = "{class}"
DEFAULT_TEMPLATE = "a photograph of {class}"  # DiffSegmenter's released VOC prompt (no article)
DEFAULT_CLASS_WEIGHT = 1.21  # "[class]++": 1.1² (DiffSegmenter)
ClassWeighting = Literal["scale", "compel"]
CLASS_WEIGHTINGS: tuple[ClassWeighting, ...] = ("scale", "compel")
ClassTokenMode = Literal["mean", "first", "last"]
CLASS_TOKEN_MODES: tuple[ClassTokenMode, ...] = ("mean", "first", "last")
JOINT_PREFIX = "a photograph of "  # joint prompts: "a photograph of horse, grass"
JOINT_SEPARATOR = ", "
CAPTION = "caption"  # descriptors="caption", naming="caption": the words come from a captioner


@dataclass(frozen=True)
class Preparation:
    """The model input, in pixels: ``geometry`` ``center_crop`` (the centred square, DiffSeg's
    protocol), ``squash`` (the whole image resized to a square), ``aspect`` (the longer side to
    ``image_size``, the shorter to the nearest multiple of 64) or ``diffcut_crop`` (the centred
    square of side min(H, W) − 1 as DiffCut's dataloader crops it); bilinear, antialiased or not."""

    image_size: int = 512
    geometry: GeometryMode = "center_crop"
    antialias: bool = False

    def __post_init__(self) -> None:
        if self.image_size < SIDE_MULTIPLE or self.image_size % SIDE_MULTIPLE:
            raise ConfigError("image_size", f"must be a positive multiple of {SIDE_MULTIPLE}; got {self.image_size}")
        if self.geometry not in GEOMETRIES:
            raise ConfigError("geometry", f"must be one of {GEOMETRIES}; got {self.geometry!r}")

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Attention resolutions (longer latent side per UNet level): 64, 32, 16, 8 at 512 px."""
        return tuple(self.image_size // LATENT_FACTOR // 2**level for level in range(UNET_LEVELS))

    def prepare(self, rgb: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """(H, W, 3) uint8 image → ((h, w, 3) uint8 model input, geometry)."""
        return prepare_image(rgb, self.image_size, self.geometry, self.antialias)


@dataclass(frozen=True)
class Noising:
    """What the UNet step sees (timesteps in [0, 1000)): ``none`` (the clean latent at ``timestep``,
    default 300, DiffSeg), ``noise`` (seeded Gaussian noise added at ``timestep``, DiffSegmenter)
    or ``ddim_inversion`` (deterministic DDIM inversion for ``inversion_steps`` of
    ``num_inference_steps``, then the step at the last inverted timestep; ``timestep`` unset).
    ``timesteps`` (instead of ``timestep``; ``none`` or ``noise``): the attention is the mean of
    the captures at each of these steps, stacked in the batch of one UNet call (DiffSegmenter's
    pseudo-labels: 1, 50, 100, 150). ``flow`` (MM-DiT, flow matching): x_t = (1 − σ)·x₀ + σ·ε with
    seeded ε, at the σ of inference step ``flow_step`` (Python indexing: −8 is the eighth from the
    end) of ``num_inference_steps`` in the backbone's scheduler (its shift applied), the transformer
    called at that step's timestep σ·1000 (Seg4Diff's NOISE_STEPS 8 reads ``timesteps[-8]`` of 28:
    σ ≈ 0.515)."""

    noise: NoiseMode = "none"
    timestep: int | None = None
    timesteps: tuple[int, ...] | None = field(default=None, metadata=ADDED)
    inversion_steps: int = 10
    num_inference_steps: int = 50
    seed: int = 0
    flow_step: int | None = field(default=None, metadata=ADDED)

    def __post_init__(self) -> None:
        if self.noise not in NOISE_MODES:
            raise ConfigError("noise", f"must be one of {NOISE_MODES}; got {self.noise!r}")
        if self.noise == "flow":
            if self.timestep is not None or self.timesteps is not None:
                given = "timestep" if self.timestep is not None else "timesteps"
                raise ConfigError(given, "is set by flow_step under noise='flow'; leave it unset")
            steps = self.num_inference_steps
            if self.flow_step is None or not -steps <= self.flow_step < steps:
                raise ConfigError(
                    "flow_step",
                    f"noise='flow' needs a step index in [-{steps}, {steps}) of num_inference_steps={steps} "
                    f"(Python indexing; Seg4Diff: -8 of 28); got {self.flow_step}",
                )
        elif self.flow_step is not None:
            raise ConfigError("flow_step", f"applies to noise='flow' only; got noise={self.noise!r}")
        if self.noise == "ddim_inversion" and self.timestep is not None:
            raise ConfigError("timestep", "is set by inversion_steps under noise='ddim_inversion'; leave it unset")
        if self.timestep is not None and not 0 <= self.timestep < 1000:
            raise ConfigError("timestep", f"must be in [0, 1000); got {self.timestep}")
        if self.timesteps is not None:
            if not isinstance(self.timesteps, (list, tuple)) or any(isinstance(t, (str, bool)) for t in self.timesteps):
                raise ConfigError(
                    "timesteps", f"expects a list of steps, e.g. [1, 50, 100, 150]; got {self.timesteps!r}"
                )
            steps = tuple(int(t) for t in self.timesteps)
            object.__setattr__(self, "timesteps", steps)
            if self.timestep is not None:
                raise ConfigError("timesteps", "replaces timestep: give one or the other")
            if self.noise == "ddim_inversion":
                raise ConfigError("timesteps", "averages steps of the none or noise modes, not of ddim_inversion")
            if not steps or len(set(steps)) != len(steps) or not all(0 <= t < 1000 for t in steps):
                raise ConfigError("timesteps", f"must be distinct steps in [0, 1000); got {list(self.timesteps)}")
        if not 1 <= self.inversion_steps <= self.num_inference_steps:
            raise ConfigError(
                "inversion_steps",
                f"must be in [1, num_inference_steps={self.num_inference_steps}]; got {self.inversion_steps}",
            )


@dataclass(frozen=True)
class Capture:
    """Which attention a UNet call keeps: the UNet ``blocks``; the self-attention levels
    ``capture_resolutions`` (latent sides, kept in descending order; None = all, by default the
    levels the method reads); ``cross_attention`` (N × 77 per layer, kept at every level; a config
    that prompts with classes captures it whatever this says: ``ExtractConfig.captured``);
    ``self_attention`` (False: none, for methods that read features only). ``feature_layer``:
    ``"BLOCK:INDEX"`` keeps the output features of one self-attention layer, the INDEX-th (Python
    indexing, forward order) of the ``down``, ``mid`` or ``up`` blocks' self-attention layers;
    ``"down:-1"``, the last of the down path, is DiffCut's layer on SD 1.x and SDXL alike. On an MM-DiT
    (SD3) ``layers`` picks the transformer blocks whose joint attention is kept (0-based; None: all;
    ``blocks`` does not apply) and ``feature_layer="layer:K"`` keeps block K's image-token output."""

    blocks: tuple[Block, ...] = BLOCKS
    capture_resolutions: tuple[int, ...] | None = None
    cross_attention: bool = False
    self_attention: bool = field(default=True, metadata=ADDED)
    feature_layer: str | None = field(default=None, metadata=ADDED)
    layers: tuple[int, ...] | None = field(default=None, metadata=ADDED)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if self.layers is not None:
            if isinstance(self.layers, int) or any(isinstance(i, (bool, str, float)) for i in self.layers):
                raise ConfigError("layers", f"expects a list of MM-DiT block indices, e.g. [9]; got {self.layers!r}")
            layers = tuple(sorted({int(i) for i in self.layers}))
            if not layers or layers[0] < 0:
                raise ConfigError("layers", f"must be block indices ≥ 0 (0-based), e.g. [9]; got {list(self.layers)}")
            object.__setattr__(self, "layers", layers)
        if set(self.blocks) - set(BLOCKS) or not self.blocks:
            raise ConfigError("blocks", f"must be a non-empty subset of {BLOCKS}; got {self.blocks}")
        if self.feature_layer is not None:
            parse_feature_layer(self.feature_layer)
        if self.capture_resolutions is not None:
            if not self.capture_resolutions or min(self.capture_resolutions) < 1:
                raise ConfigError(
                    "capture_resolutions", f"must be positive latent sizes or None; got {self.capture_resolutions}"
                )
            object.__setattr__(self, "capture_resolutions", tuple(sorted(set(self.capture_resolutions), reverse=True)))

    def selects(self, layer) -> bool:
        """Whether to capture ``layer`` (a ``dsseg.model.attention.AttentionLayer``), whatever its level."""
        if layer.block == "layer":  # an MM-DiT block's joint attention holds both kinds
            wanted = self.self_attention or self.cross_attention
            return wanted and (self.layers is None or layer.index in self.layers)
        wanted_kind = self.self_attention if layer.kind == "self" else self.cross_attention
        return wanted_kind and layer.block in self.blocks

    def keeps_self_attention_at(self, side: int) -> bool:
        """Whether self-attention is kept at the level whose longer latent side is ``side``."""
        return self.capture_resolutions is None or side in self.capture_resolutions


def parse_feature_layer(spec: str) -> tuple[Block | Literal["layer"], int]:
    """``"down:-1"`` → ("down", −1); ``"layer:9"`` (an MM-DiT block) → ("layer", 9); a ``ConfigError``
    naming the form otherwise."""
    block, _, index = str(spec).partition(":")
    try:
        position = int(index)
    except ValueError:
        position = None
    if block not in (*BLOCKS, MMDIT_BLOCK) or position is None:
        raise ConfigError(
            "feature_layer",
            f"expects BLOCK:INDEX with BLOCK one of {BLOCKS} (UNet), e.g. 'down:-1', or 'layer:K' (MM-DiT block K); got {spec!r}",
        )
    return block, position  # type: ignore[return-value]


@dataclass(frozen=True)
class Prompting:
    """The conditioning text. ``prompt`` (default empty) unless classes are named. Candidate classes:
    ``classes`` or a shipped ``vocabulary`` (voc20, context59, coco80), replaced per image by lists
    given at call time. ``class_template`` (with ``{class}``): one prompt per class,
    ``class_batch_size`` per UNet call (open vocabulary); None: one joint prompt naming them (to
    name segments). ``class_weight`` scales the class-name tokens' text embeddings;
    ``descriptors``: per class, words put before its name whose maps fuse with the name's; or
    ``"caption"``: each class prompt continued by a conditional caption of the image (DiffSegmenter's
    augmented prompts; needs a captioner).
    ``class_weighting``: how ``class_weight`` w re-weights a class token's text state z:
    ``compel`` as Compel's "name++" (DiffSegmenter's code): e + w·(z − e), e the empty prompt's
    state at that position, on the tokens of the name's last word; ``scale``: w·z on every token
    of the name (dsseg before issue 26; kept so that earlier outputs keep their config ids).
    ``class_tokens``: which tokens' cross-attention make a class's map: ``mean`` (every token of
    the name, fused half and half with its descriptors' tokens), ``first`` or ``last`` (the
    name's first or last token, as DiffSegmenter's VOC and COCO/Context code); with ``first`` or
    ``last``, when the word after the name ends in "ing" (a conditional caption's "standing"),
    the token ``participle_offset`` positions on is averaged in (1 as released for VOC and
    Context; the released COCO code reads 2). ``spellings``: the word(s) a class prompt names a
    class by — a table name (``diffsegmenter-voc20``, ``-context59``, ``-coco80``: the released
    code's spellings, "plane" for aeroplane) or {class: words}; segments keep the class names.
    ``joint_names`` (set by ``dsseg.spec`` when segments are named, not a parameter): prompt with
    the joint names even when only the images carry classes. ``caption_names`` (set for
    ``naming="caption"``): each image's prompt is its caption and its classes the caption's nouns.
    ``joint_prefix`` and ``joint_separator``: the joint prompt's form, prefix + names joined by the
    separator ("a photograph of horse, grass"; Seg4Diff's released code: "" and " ", "horse grass")."""

    prompt: str = ""
    classes: tuple[str, ...] = field(default=(), metadata=OWN_TYPE_CHECK)  # one string: a message of its own
    vocabulary: str | None = None
    class_template: str | None = None
    class_weight: float = 1.0
    descriptors: tuple[tuple[str, tuple[str, ...]], ...] | str = field(default=(), metadata=OWN_TYPE_CHECK)
    class_batch_size: int = 8
    class_weighting: ClassWeighting = field(default="scale", metadata=ADDED)
    class_tokens: ClassTokenMode = field(default="mean", metadata=ADDED)
    participle_offset: int = field(default=1, metadata=ADDED)
    spellings: str | tuple[tuple[str, str], ...] | None = field(default=None, metadata=ADDED)
    joint_prefix: str = field(default=JOINT_PREFIX, metadata=ADDED)
    joint_separator: str = field(default=JOINT_SEPARATOR, metadata=ADDED)
    joint_names: bool = field(default=False, metadata=DERIVED)
    caption_names: bool = field(default=False, metadata=DERIVED)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", candidate_classes(self.classes, self.vocabulary))
        if isinstance(self.descriptors, str) and self.descriptors != CAPTION:
            raise ConfigError(
                "descriptors", f"expects {{class: [words]}} or {CAPTION!r} (from a captioner); got {self.descriptors!r}"
            )
        if self.descriptors != CAPTION:
            descriptors = self.descriptors.items() if isinstance(self.descriptors, Mapping) else self.descriptors
            object.__setattr__(self, "descriptors", tuple(sorted((str(k), tuple(v)) for k, v in descriptors)))
        if self.class_template is not None:
            check_template(self.class_template)
        elif self.descriptors:
            raise ConfigError("descriptors", "need one prompt per class: set class_template")
        if self.class_weight <= 0:
            raise ConfigError("class_weight", f"must be > 0; got {self.class_weight}")
        if self.class_batch_size < 1:
            raise ConfigError("class_batch_size", f"must be ≥ 1; got {self.class_batch_size}")
        if self.class_weighting not in CLASS_WEIGHTINGS:
            raise ConfigError("class_weighting", f"must be one of {CLASS_WEIGHTINGS}; got {self.class_weighting!r}")
        if self.class_tokens not in CLASS_TOKEN_MODES:
            raise ConfigError("class_tokens", f"must be one of {CLASS_TOKEN_MODES}; got {self.class_tokens!r}")
        if self.participle_offset < 0:
            raise ConfigError("participle_offset", f"must be ≥ 0 (0: never); got {self.participle_offset}")
        object.__setattr__(self, "spellings", check_spellings(self.spellings))
        if not self.joint_separator:
            raise ConfigError("joint_separator", "must not be empty (names would run together), e.g. ' ' or ', '")

    def spelled(self, name: str) -> str:
        """The word(s) a class prompt names class ``name`` by (``spellings``; else the name)."""
        if self.spellings is None:
            return name
        table = get_spellings(self.spellings) if isinstance(self.spellings, str) else dict(self.spellings)
        return table.get(name, name)

    @property
    def uses_classes(self) -> bool:
        """Whether images are prompted with class names (per-image lists at call time apply)."""
        return bool(self.classes) or self.class_template is not None or self.joint_names

    @property
    def caption_descriptors(self) -> bool:
        """Whether class prompts are continued by conditional captions (``descriptors="caption"``)."""
        return self.descriptors == CAPTION

    @property
    def needs_captioner(self) -> bool:
        """Whether this prompting reads captions (named by them, or prompts continued by them)."""
        return self.caption_names or self.caption_descriptors


def per_image_classes(
    default: tuple[str, ...], classes: Sequence[Sequence[str] | None] | None, count: int
) -> list[tuple[str, ...]]:
    """Each of ``count`` images' candidate classes: its own list in ``classes`` where given (names
    stripped), else ``default``; ``ValueError`` when ``classes`` holds another number of lists."""
    if classes is not None and len(classes) != count:
        raise ValueError(f"{len(classes)} class lists given for {count} images")
    return [default if c is None else tuple(str(name).strip() for name in c) for c in (classes or [None] * count)]


def candidate_classes(classes: Sequence[str] | str, vocabulary: str | None) -> tuple[str, ...]:
    """``classes`` (names) or a shipped ``vocabulary``'s, checked: a ``ConfigError`` for a bare string,
    an unknown vocabulary, both given (unless equal: a config copied with ``replace()``), empty or
    repeated names."""
    if isinstance(classes, str):
        raise ConfigError(
            "classes", f"must be a list of names; got the string {classes!r} (for a shipped list use vocabulary=...)"
        )
    names = tuple(str(name).strip() for name in classes)
    if vocabulary is not None:
        try:
            shipped = get_vocabulary(vocabulary)
        except ValueError as error:
            raise ConfigError("vocabulary", str(error)) from None
        if names and names != shipped:
            raise ConfigError("vocabulary", "give either classes or vocabulary, not both")
        names = shipped
    check_class_names(names)
    return names


def check_spellings(spellings: Any) -> str | tuple[tuple[str, str], ...] | None:
    """``spellings`` validated: None, a shipped table's name, or {class: words} as sorted pairs."""
    if spellings is None:
        return None
    if isinstance(spellings, str):
        try:
            get_spellings(spellings)
        except ValueError as error:
            raise ConfigError("spellings", str(error)) from None
        return spellings
    pairs = spellings.items() if isinstance(spellings, Mapping) else spellings
    try:
        checked = tuple(sorted((str(name), str(words).strip()) for name, words in pairs))
    except (TypeError, ValueError):
        raise ConfigError(
            "spellings", f"expects a table name or {{class: words}}, e.g. {{'aeroplane': 'plane'}}; got {spellings!r}"
        ) from None
    if any(not words for _, words in checked):
        raise ConfigError("spellings", f"words must be non-empty; got {dict(checked)}")
    return checked


def check_template(template: str) -> None:
    """Raise a ``ConfigError`` unless ``template`` holds ``{class}`` exactly once."""
    if template.count(CLASS_PLACEHOLDER) != 1:
        raise ConfigError(
            "class_template",
            f"must contain {CLASS_PLACEHOLDER} exactly once, e.g. {DEFAULT_TEMPLATE!r}; got {template!r}",
        )


def check_class_names(names: Sequence[str]) -> None:
    """Raise a ``ConfigError`` for empty or repeated class names."""
    if any(not name for name in names):
        raise ConfigError("classes", f"names must be non-empty; got {list(names)}")
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise ConfigError("classes", f"names repeat: {repeated}")


PARTS = {"preparation": Preparation, "noising": Noising, "capture": Capture, "prompting": Prompting}
REPLACES = {"timestep": "timesteps", "timesteps": "timestep"}  # parameters that stand for each other
# The step parameters each noise mode takes (the optional ones, None by default).
NOISE_STEP_PARAMS = {"none": ("timestep", "timesteps"), "noise": ("timestep", "timesteps"), "flow": ("flow_step",)}
RUNTIME_FIELDS = ("class_batch_size",)  # change speed or memory but not results: left out of config ids


EXTRACT_PARAMS = frozenset(name for part in PARTS.values() for name in param_names(part))


@dataclass(frozen=True)
class ExtractConfig:
    """How attention is extracted: one config per concern (see the module docstring)."""

    preparation: Preparation = Preparation()
    noising: Noising = Noising()
    capture: Capture = Capture()
    prompting: Prompting = Prompting()

    def __post_init__(self) -> None:
        if self.capture.capture_resolutions is not None:
            check_resolutions(self.capture.capture_resolutions, self.preparation)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], base: ExtractConfig | None = None) -> ExtractConfig:
        """``base`` (default: all defaults) with the flat extraction ``params`` applied to the configs
        that own them; ``ConfigError`` for a name no config owns."""
        base = base or cls()
        unknown = sorted(set(params) - EXTRACT_PARAMS)
        if unknown:
            raise ConfigError(unknown[0], f"is not an extraction parameter; they are {sorted(EXTRACT_PARAMS)}")
        # One of two parameters that replace each other, given over a base, clears the base's other
        # (openvocab's default timestep 100, then timesteps=[1, 50, 100, 150]); both given is an error.
        cleared = {REPLACES[name]: None for name in params if name in REPLACES and REPLACES[name] not in params}
        # A noise mode given over a base clears the base's step settings that mode does not take (openvocab's
        # timestep 100 under noise="flow"; seg4diff's flow_step under noise="none").
        if "noise" in params:
            kept = NOISE_STEP_PARAMS.get(params["noise"], ())
            cleared.update({name: None for names in NOISE_STEP_PARAMS.values() for name in names if name not in kept})
        params = {**cleared, **params}
        parts = {}
        for name, part_class in PARTS.items():
            own = {k: v for k, v in params.items() if k in param_names(part_class)}
            check_param_types(part_class, own)
            parts[name] = dataclasses.replace(getattr(base, name), **own) if own else getattr(base, name)
        return cls(**parts)

    def flat(self) -> dict[str, Any]:
        """Every parameter by name (derived fields left out): the form config ids hash. Parameters
        added after outputs were written appear only when set (``added_at_default``), so those ids hold."""
        out: dict[str, Any] = {}
        for name, part_class in PARTS.items():
            part = getattr(self, name)
            unset = added_at_default(part)
            out.update({key: getattr(part, key) for key in param_names(part_class) if key not in unset})
        return out

    @property
    def uses_classes(self) -> bool:
        return self.prompting.uses_classes

    @property
    def captured(self) -> Capture:
        """What a UNet call of this extraction keeps: ``capture``, with cross-attention whenever
        images are prompted with classes (their maps are cross-attention)."""
        if self.uses_classes and not self.capture.cross_attention:
            return dataclasses.replace(self.capture, cross_attention=True)
        return self.capture

    def shared_forward_key(self) -> ExtractConfig:
        """What must be equal for two configs to share one UNet forward: all but the captured levels,
        cross-attention and the class batch size (the shared forward takes the union)."""
        return dataclasses.replace(
            self,
            capture=dataclasses.replace(self.capture, capture_resolutions=None, cross_attention=False),
            prompting=dataclasses.replace(self.prompting, class_batch_size=1),
        )


def check_resolutions(resolutions: Sequence[int], preparation: Preparation) -> None:
    """Raise a ``ConfigError`` unless every resolution is a UNet level at ``preparation.image_size``."""
    missing = sorted(set(resolutions) - set(preparation.level_sizes), reverse=True)
    if missing:
        raise ConfigError(
            "resolutions",
            f"{missing} do not exist at image_size {preparation.image_size}: the attention levels are {list(preparation.level_sizes)}",
        )
