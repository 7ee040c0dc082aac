"""The rules that span several settings, each written once (as a diffusers pipeline's ``check_inputs``).

A rule about one parameter lives with that parameter's config (``dsseg.model.config``, the method
configs); a rule about one method config lives in ``dsseg.spec``. The rules here tie a run's
configs to each other or to what the run is given (a captioner, a class filter, per-image classes),
and every place that needs one calls it: the ``Segmenter``, ``segment_image``, the segment job's
settings (``dsseg.job.config.SegmentJob``) and the evaluation's manifest.

- ``shared_preparation``: the configs of one run share the model input (image_size, geometry,
  antialias), since each image is prepared once;
- ``reads_captions`` / ``check_captioner``: a captioner is required when a config, or the class
  filter narrowing a config's classes, reads captions (and in a job, ``check_captioner_used``,
  refused when none may read them);
- ``needs_image_classes`` / ``check_classes_given`` / ``check_candidates``: a config that labels
  pixels by class needs candidate classes for every image (its own, the image's, or the class filter's),
  and so does one that names its segments with CLIP (its own or the image's; ``clip_candidates``).

Errors are ``ConfigError``s naming the parameter (the command line names its flag). No model code here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from dsseg.errors import ConfigError
from dsseg.model.config import (
    BLOCKS,
    LATENT_FACTOR,
    MMDIT_BLOCK,
    MMDIT_PATCH,
    parse_feature_layer,
    per_image_classes,
)

if TYPE_CHECKING:
    from dsseg.model.config import Preparation
    from dsseg.spec import SegmentConfig

PREPARATION_PARAMS = ("image_size", "geometry", "antialias")
HOW_TO_GIVE_CLASSES = (
    "give classes=[...] or vocabulary=... (voc20, context59, coco80), or each image a non-empty class list "
    "(a classes column in a manifest)"
)


def shared_preparation(configs: Sequence[SegmentConfig]) -> Preparation:
    """The model input every config takes; a ``ConfigError`` naming the first of ``image_size``,
    ``geometry``, ``antialias`` that differs between them (each image is prepared once per run)."""
    first = configs[0].extraction.preparation
    for config in configs[1:]:
        other = config.extraction.preparation
        differing = [name for name in PREPARATION_PARAMS if getattr(other, name) != getattr(first, name)]
        if differing:
            raise ConfigError(
                differing[0],
                "all configs of a run must share image_size, geometry and antialias (the model input is "
                f"prepared once per image); these differ in {differing[0]}: run the others as another job",
            )
    return first


def caption_reader(config: SegmentConfig, filter_reads_captions: bool) -> str | None:
    """What of ``config`` reads captions (``naming='caption'``, ``descriptors='caption'``, or the
    class filter narrowing its classes when ``filter_reads_captions``); None when nothing does."""
    prompting = config.extraction.prompting
    if prompting.caption_names:
        return "naming='caption'"
    if prompting.caption_descriptors:
        return "descriptors='caption'"
    if filter_reads_captions and prompting.uses_classes:
        return "the class filter"
    return None


def reads_captions(config: SegmentConfig, filter_reads_captions: bool = False) -> bool:
    """Whether ``config`` reads captions: named by them, its class prompts continued by them, or its
    classes narrowed by a class filter that reads them (``filter_reads_captions``)."""
    return caption_reader(config, filter_reads_captions) is not None


def check_captioner(configs: Sequence[SegmentConfig], *, captioner: bool, filter_reads_captions: bool) -> None:
    """Raise a ``ConfigError`` (``captioner``) when there is no ``captioner`` and a config reads captions."""
    if captioner:
        return
    for config in configs:
        what = caption_reader(config, filter_reads_captions)
        if what is not None:
            raise ConfigError(
                "captioner",
                f"the {config.method} config reads captions ({what}): give a captioner, tiny or a BLIP hub id "
                "or folder, e.g. Salesforce/blip-image-captioning-base",
            )


def check_captioner_used(configs: Sequence[SegmentConfig], *, captioner: bool, filter_may_read_captions: bool) -> None:
    """Raise a ``ConfigError`` (``captioner``) when a ``captioner`` is given and no config may read
    captions (``filter_may_read_captions``: the class filter may, a factory's that reads them when it
    sets ``needs_captions``). A segment job checks this: the captioner is part of its config ids."""
    if captioner and not any(reads_captions(config, filter_may_read_captions) for config in configs):
        raise ConfigError(
            "captioner",
            "no config reads captions: add --param naming=caption (diffseg, ncut), --param descriptors=caption "
            "(openvocab) or --class-filter caption, or leave out the captioner",
        )


def needs_image_classes(config: SegmentConfig, *, filter_supplies_classes: bool = False) -> bool:
    """Whether each image must bring its own candidate classes for ``config``: it labels pixels by
    class (a class template) and names none itself, and no class filter gives images their
    candidates (``filter_supplies_classes``: ``candidates:FILE``); or it names segments with CLIP
    (``naming="clip"``) and names no classes (class filters do not narrow CLIP's candidates)."""
    if config.clip is not None:
        return not config.clip.classes
    prompting = config.extraction.prompting
    return prompting.class_template is not None and not prompting.classes and not filter_supplies_classes


def classes_error(config: SegmentConfig, lacking: str) -> ConfigError:
    """The error of ``config`` labelling pixels by class where ``lacking`` (e.g. "image 0 of the
    batch has") no candidate classes."""
    what = "names its segments with CLIP (naming='clip')" if config.clip is not None else "labels pixels by class"
    return ConfigError(
        "classes", f"{lacking} no candidate classes, and the {config.method} config {what}: {HOW_TO_GIVE_CLASSES}"
    )


def check_classes_given(
    configs: Sequence[SegmentConfig], lacking: str | None, *, filter_supplies_classes: bool = False
) -> None:
    """Raise a ``ConfigError`` (``classes``) when some images lack class lists of their own (``lacking``
    says which, e.g. "2 image(s) with no (or an empty) class list have"; None: none lack them) and a
    config needs them (``needs_image_classes``)."""
    if lacking is None:
        return
    for config in configs:
        if needs_image_classes(config, filter_supplies_classes=filter_supplies_classes):
            raise classes_error(config, lacking)


def check_candidates(
    config: SegmentConfig, candidates: Sequence[Sequence[str]], *, filter_supplies_classes: bool = False
) -> None:
    """Raise a ``ConfigError`` (``classes``) when ``config`` labels pixels by class and an image of a
    batch has no candidate classes (``candidates``: per image, its list or the config's), unless a
    class filter gives images their candidates. (A filter that keeps none leaves the image all background.)"""
    if config.extraction.prompting.class_template is None or filter_supplies_classes:
        return
    for index, names in enumerate(candidates):
        if not names:
            raise classes_error(config, f"image {index} of the batch has")


def clip_candidates(
    config: SegmentConfig, classes: Sequence[Sequence[str] | None] | None, images: int
) -> list[tuple[str, ...]]:
    """Per image of a batch of ``images``, the classes ``naming="clip"`` names its segments among:
    its own list where given (``classes``), else the config's; a ``ConfigError`` (``classes``) for
    an image left with none."""
    assert config.clip is not None
    lists = per_image_classes(config.clip.classes, classes, images)
    for index, names in enumerate(lists):
        if not names:
            raise classes_error(config, f"image {index} of the batch has")
    return lists


__all__ = [
    "caption_reader",
    "clip_candidates",
    "check_candidates",
    "check_captioner",
    "check_captioner_used",
    "check_classes_given",
    "classes_error",
    "needs_image_classes",
    "reads_captions",
    "shared_preparation",
]


# Methods that read one family's attention only.
FAMILY_METHODS = {"seg4diff": "mmdit"}
SD3_EXAMPLES = "tiny-sd3, sd3-random, stabilityai/stable-diffusion-3-medium-diffusers or a local SD3 folder"


def check_family(configs: Sequence[SegmentConfig], family: str) -> None:
    """Raise a ``ConfigError`` naming the parameter where a config cannot run on a backbone of
    ``family`` (``dsseg.model.families``): a UNet's blocks, DDPM noise or down/mid/up feature layers on
    an MM-DiT; MM-DiT layers, flow-matching noise or Seg4Diff on a UNet; levels the backbone lacks."""
    for config in configs:
        wanted = FAMILY_METHODS.get(config.method)
        if wanted is not None and wanted != family:
            raise ConfigError(
                "method", f"{config.method} reads MM-DiT joint attention: use an SD3 backbone ({SD3_EXAMPLES})"
            )
        extraction = config.extraction
        noise, capture = extraction.noising.noise, extraction.capture
        feature_layer = capture.feature_layer
        on_mmdit_layer = feature_layer is not None and parse_feature_layer(feature_layer)[0] == MMDIT_BLOCK
        if family == "mmdit":
            _check_on_mmdit(config, noise, capture, feature_layer, on_mmdit_layer)
        else:
            if noise == "flow":
                raise ConfigError(
                    "noise", "'flow' (flow matching) is for MM-DiT backbones; UNets take none, noise or ddim_inversion"
                )
            if capture.layers is not None:
                raise ConfigError("layers", "picks MM-DiT blocks; on a UNet choose blocks or capture_resolutions")
            if on_mmdit_layer:
                raise ConfigError(
                    "feature_layer", f"{feature_layer!r} names an MM-DiT block; on a UNet give e.g. 'down:-1'"
                )


def _check_on_mmdit(
    config: SegmentConfig, noise: str, capture, feature_layer: str | None, on_mmdit_layer: bool
) -> None:
    if noise in ("noise", "ddim_inversion"):
        raise ConfigError(
            "noise",
            f"{noise!r} reads a UNet's DDPM schedule; an MM-DiT is noised by flow matching: noise='flow' with "
            "flow_step (e.g. flow_step=-8, num_inference_steps=28 as Seg4Diff), or noise='none'",
        )
    if tuple(capture.blocks) != BLOCKS:
        raise ConfigError("blocks", "picks UNet blocks; on an MM-DiT choose transformer blocks with layers=[...]")
    if feature_layer is not None and not on_mmdit_layer:
        raise ConfigError(
            "feature_layer",
            f"{feature_layer!r} names a UNet layer; on an MM-DiT give one transformer block's output, e.g. 'layer:9'",
        )
    side = config.extraction.preparation.image_size // LATENT_FACTOR // MMDIT_PATCH  # the one token grid
    levels = set(capture.capture_resolutions or ()) | set(getattr(config.params, "resolutions", None) or ())
    if levels - {side}:
        name = "resolutions" if getattr(config.params, "resolutions", None) else "capture_resolutions"
        raise ConfigError(
            name,
            f"an MM-DiT has one token grid, {side}² at image_size {config.extraction.preparation.image_size}; "
            f"got {sorted(levels, reverse=True)} (leave it unset)",
        )
