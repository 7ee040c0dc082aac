"""dsseg: zero-shot segmentation from the attention of a frozen Stable Diffusion UNet.

Public API: ``segment_image``, ``segment_attention``, ``Segmentation``; ``load_backbone`` (and
``load_captioner``, a BLIP for names and prompts from captions) to load a model once, ``MethodSpec`` for a method config and ``Segmenter`` to segment batches with one or
more of them (``Segmenter.segment(batch)`` → [config][image]; ``Segmenter.batch`` prepares a ``Batch``). Names are imported on first use, so ``import dsseg`` (or a light submodule such as
``dsseg.evaluation.metrics``) loads no model code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name → the module that defines it
_EXPORTS = {
    "segment_image": "dsseg.api",
    "segment_attention": "dsseg.api",
    "Segmentation": "dsseg.segmentation",
    "Segmenter": "dsseg.segmenter",
    "Batch": "dsseg.segmenter",
    "MethodSpec": "dsseg.spec",
    "ConfigError": "dsseg.errors",
    "ExtractConfig": "dsseg.model.config",
    "AttentionBundle": "dsseg.model.extract",
    "AttentionExtractor": "dsseg.model.extract",
    "Backbone": "dsseg.model.backbone",
    "BackboneNotFoundError": "dsseg.model.backbone",
    "load_backbone": "dsseg.model.backbone",
    "Captioner": "dsseg.model.captioner",
    "CaptionerNotFoundError": "dsseg.model.captioner",
    "load_captioner": "dsseg.model.captioner",
}

__all__ = [
    "AttentionBundle", "AttentionExtractor", "Backbone", "Batch", "BackboneNotFoundError", "Captioner", "CaptionerNotFoundError",
    "ConfigError", "ExtractConfig", "MethodSpec", "Segmentation", "Segmenter", "load_backbone", "load_captioner",
    "segment_attention", "segment_image",
]  # fmt: skip

if TYPE_CHECKING:
    from dsseg.api import segment_attention, segment_image
    from dsseg.errors import ConfigError
    from dsseg.model.backbone import Backbone, BackboneNotFoundError, load_backbone
    from dsseg.model.captioner import Captioner, CaptionerNotFoundError, load_captioner
    from dsseg.model.config import ExtractConfig
    from dsseg.model.extract import AttentionBundle, AttentionExtractor
    from dsseg.segmentation import Segmentation
    from dsseg.segmenter import Batch, Segmenter
    from dsseg.spec import MethodSpec


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dsseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
