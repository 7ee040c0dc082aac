"""How far a half-precision backbone's results are from float32's on the same images
(``dsseg benchmark --precision-study``).

For each method and image, the backbone is run in float32 and in the other precision with the same
seeded noise; compared are what the method reads (the aggregated self-attention (N, N) its config
aggregates, or DiffCut's feature map (N, C)), max |Δ| and the largest row's |Δ| relative to the
row's scale, and the method's label maps in the model frame: adjusted Rand index (1 = the same
partition up to renaming) and segment counts. The methods' own float32 islands (softmax in the
capture, aggregation, merging, eigen-solvers, PAMR) run as they do in a job.

As a yardstick of how much the backbone itself moves the labels under a tiny perturbation, each
image is also run in float32 with only its encoded latent rounded to the other precision
(``latent_rounded_ari``): where that alone moves the labels as far, the backbone (e.g. a random-weight
one) cannot show whether the precision is safe for a method.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dsseg.benchmark.comparisons import aggregation_levels
from dsseg.evaluation.metrics import adjusted_rand_index
from dsseg.io.images import load_rgb
from dsseg.methods.aggregate import aggregate_self_attention
from dsseg.model.backbone import load_backbone
from dsseg.model.extract import AttentionBundle
from dsseg.segmenter import Segmenter, run_config
from dsseg.spec import MethodSpec

STUDY_METHODS = ("diffseg", "ncut", "openvocab", "diffcut")
# openvocab's candidate classes in the study: things and stuff of the test and shared photos
STUDY_CLASSES = ("horse", "person", "bird", "car", "grass", "sky", "tree", "building", "road", "water")


def method_input(spec: MethodSpec, bundle: AttentionBundle) -> torch.Tensor:
    """What the method of ``spec`` segments, for the first image of ``bundle``: the aggregated
    self-attention (N, N) float32 at its config's levels, or the feature map (N, C) it reads."""
    if bundle.self_attention:
        levels = aggregation_levels(spec.method, spec.resolved.params, bundle.self_attention)
        aggregated, _ = aggregate_self_attention(bundle.self_attention, *levels)
        return aggregated[0].float()
    return bundle.features[0].float()  # (N, C)


def rounding_latents(segmenter: Segmenter, dtype: torch.dtype) -> Segmenter:
    """``segmenter`` (float32) with every encoded latent rounded to ``dtype`` and back: the yardstick run."""
    for group in segmenter.groups:
        encode = group.extractor.encode
        group.extractor.encode = lambda images, encode=encode: encode(images).to(dtype).float()
    return segmenter


def compare_image(segmenters: Sequence[Segmenter], rgb: np.ndarray, classes: Sequence[str] | None) -> dict:
    """One image through the float32, the other and the yardstick (latent-rounded float32)
    segmenter: max |Δ| of the method's input (other against float32), the largest |Δ| relative to
    its row's max, ARI of the labels (other; yardstick) against float32's and the segment counts."""
    inputs, labels = [], []
    for segmenter in segmenters:
        batch = segmenter.batch([rgb], classes=[list(classes)] if classes else None)
        bundle, _ = segmenter.forward(batch)
        inputs.append(method_input(segmenter.specs[0], bundle))
        labels.append(run_config(segmenter.config, bundle)[0].labels.cpu().numpy())
    difference = (inputs[0] - inputs[1]).abs()
    scale = inputs[0].abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return {
        "max_abs_difference": float(difference.max()),
        "max_relative_difference": float((difference / scale).max()),
        "ari": round(adjusted_rand_index(labels[0], labels[1]), 4),
        "latent_rounded_ari": round(adjusted_rand_index(labels[0], labels[2]), 4),
        "segments": [int(np.unique(labels[0]).size), int(np.unique(labels[1]).size)],
    }


def precision_study(
    backbone: str, images: Sequence[str | Path], other: str = "bfloat16", methods: Sequence[str] = STUDY_METHODS
) -> dict:
    """Per method: each image's comparison (``compare_image``) of ``other`` against float32 on CPU,
    and the summary (median and worst ARI, the yardstick's median ARI, worst max |Δ|, how many images
    kept their segment count)."""
    backbones = [load_backbone(backbone, device="cpu", dtype=dtype) for dtype in ("float32", other)]
    rgbs = {str(path): load_rgb(str(path)) for path in images}
    report: dict = {"backbone": backbone, "dtypes": ["float32", other], "images": list(rgbs), "methods": {}}
    for method in methods:
        params = {"classes": STUDY_CLASSES} if method == "openvocab" else {}
        spec = MethodSpec(method, params)
        segmenters = [Segmenter(b, spec) for b in backbones]
        segmenters.append(rounding_latents(Segmenter(backbones[0], spec), backbones[1].dtype))
        rows = [
            compare_image(segmenters, rgb, STUDY_CLASSES if method == "openvocab" else None) for rgb in rgbs.values()
        ]
        aris = [row["ari"] for row in rows]
        report["methods"][method] = {
            "per_image": dict(zip(rgbs, rows)),
            "median_ari": round(statistics.median(aris), 4),
            "min_ari": min(aris),
            "median_latent_rounded_ari": round(statistics.median(row["latent_rounded_ari"] for row in rows), 4),
            "max_abs_difference": max(row["max_abs_difference"] for row in rows),
            "max_relative_difference": max(row["max_relative_difference"] for row in rows),
            "same_segment_count": sum(row["segments"][0] == row["segments"][1] for row in rows),
        }
    return report
