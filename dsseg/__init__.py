"""dsseg: zero-shot segmentation from the attention of a frozen Stable Diffusion UNet.

Public API: ``segment_image``, ``segment_attention``, ``Segmentation``; ``load_backbone`` to
load a model once, and ``Segmenter`` to segment batches with it.
"""

from dsseg.api import Segmentation, Segmenter, segment_attention, segment_image
from dsseg.model.backbone import Backbone, BackboneNotFoundError, load_backbone
from dsseg.model.extract import AttentionBundle, AttentionExtractor, ExtractConfig

__version__ = "0.1.0"

__all__ = [
    "AttentionBundle",
    "AttentionExtractor",
    "Backbone",
    "BackboneNotFoundError",
    "ExtractConfig",
    "Segmentation",
    "Segmenter",
    "load_backbone",
    "segment_attention",
    "segment_image",
]
