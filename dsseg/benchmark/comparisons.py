"""Each pipeline stage computed two ways on the same input — ours and the straightforward way
that published code takes — timed, with their agreement, for ``jobs/benchmark.py --compare``.

Straightforward versions:
- ``unet``: diffusers' classic attention (``Attention.get_attention_scores``: per-head
  probabilities as (B·heads, N, M) in the model dtype) with every layer's per-head maps kept
  until the forward ends and averaged then, as the official DiffSeg code keeps them; ours
  averages heads inside the layer in float32 and keeps only the levels the method reads.
- ``aggregate``: float64 NumPy, level by level (``reference_aggregate`` of ``tests/oracles/diffseg_reference.py``,
  loaded from the source checkout by ``dsseg.benchmark.checkout``).
- ``upsample``: the full-size label map gathered first, then renumbered there.
- ``rle``: one binary mask per segment through ``pycocotools.mask.encode``.
The method's own aggregation + segmentation against its float64 transcription lives in
``jobs/benchmark.py`` (DiffSeg, NCut). Decode, VAE encoding and inversion are library calls
(Pillow, diffusers) in both: there is no second version to compare.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from dsseg.benchmark.checkout import load_oracle
from dsseg.io.frames import compact_to_original, labels_to_original
from dsseg.io.images import Geometry
from dsseg.io.masks import encode_labels
from dsseg.job.memory import peak_bytes
from dsseg.methods.aggregate import aggregate_self_attention, select_levels
from dsseg.model.attention import AttentionLayer, AttentionStore, Grid, attention_layers, capture_attention
from dsseg.model.extract import AttentionExtractor
from dsseg.timing import StageTimer

SAME_CODE_STAGES = ("decode", "encode", "invert")


@dataclass(frozen=True)
class StageComparison:
    """One stage, ours against the straightforward way: milliseconds (per image), peak device
    memory in MB (CUDA only) and how far the two results are apart (``difference_kind``)."""

    stage: str
    straightforward: str
    ours_ms: float
    straightforward_ms: float
    difference: float
    difference_kind: str
    ours_peak_mb: float | None = None
    straightforward_peak_mb: float | None = None

    def record(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "straightforward": self.straightforward,
            "ours_ms": round(self.ours_ms, 2),
            "straightforward_ms": round(self.straightforward_ms, 2),
            "speedup": round(self.straightforward_ms / max(self.ours_ms, 1e-9), 2),
            self.difference_kind: float(self.difference),
            "ours_peak_device_mb": self.ours_peak_mb,
            "straightforward_peak_device_mb": self.straightforward_peak_mb,
        }


def timed(function: Callable[[], Any], device: torch.device) -> tuple[Any, float, float | None]:
    """Run ``function`` once: (its result, milliseconds, peak device MB above the start or None)."""
    timer, results = StageTimer(device), []
    with timer.stage("run"):
        if device.type == "cuda":
            peak = round(peak_bytes(lambda: results.append(function()), device) / 2**20, 1)
        else:
            results.append(function())
            peak = None
    return results[0], timer.ms["run"], peak


class KeepAllHeadsProcessor:
    """diffusers' classic attention (``get_attention_scores``, then ``bmm`` with the values) that
    appends each layer's per-head probabilities, (B·heads, N, M) in the model dtype, to ``kept``."""

    def __init__(self, kept: list[tuple[AttentionLayer, int, torch.Tensor]], layer: AttentionLayer) -> None:
        self.kept = kept
        self.layer = layer

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key, value = attn.head_to_batch_dim(attn.to_k(context)), attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, None)
        self.kept.append((self.layer, attn.heads, probs))
        output = attn.batch_to_head_dim(torch.bmm(probs, value))
        output = attn.to_out[1](attn.to_out[0](output))
        if attn.residual_connection:
            output = output + hidden_states
        return output / attn.rescale_output_factor


@contextmanager
def keep_all_heads(unet) -> Iterator[list[tuple[AttentionLayer, int, torch.Tensor]]]:
    """Within the block every attention layer of ``unet`` keeps its per-head probabilities."""
    originals = unet.attn_processors
    kept: list[tuple[AttentionLayer, int, torch.Tensor]] = []
    unet.set_attn_processor({layer.name: KeepAllHeadsProcessor(kept, layer) for layer in attention_layers(unet)})
    try:
        yield kept
    finally:
        unet.set_attn_processor(dict(originals))


def level_means(
    kept: list[tuple[AttentionLayer, int, torch.Tensor]], store: AttentionStore
) -> dict[Grid, torch.Tensor]:
    """Self-attention of the kept layers → per level (B, N, N) float32: mean over heads, then layers,
    for the layers (blocks) and levels ``store``'s spec selects."""
    sums: dict[Grid, torch.Tensor] = {}
    counts: dict[Grid, int] = {}
    for layer, heads, probs in kept:
        selected = layer.kind == "self" and store.spec.selects(layer)
        grid = store.grid_for(probs.shape[1], "self") if selected else None
        if grid is None:
            continue
        mean = probs.view(-1, heads, *probs.shape[1:]).float().mean(1)
        sums[grid] = sums[grid] + mean if grid in sums else mean
        counts[grid] = counts.get(grid, 0) + 1
    return {grid: total / counts[grid] for grid, total in sums.items()}


def compare_capture(extractor: AttentionExtractor, images: torch.Tensor) -> StageComparison:
    """The UNet step with self-attention capture, ours against every per-head map kept, on the
    same noised latents; difference = largest absolute difference of the level maps."""
    backbone, config = extractor.backbone, extractor.config
    latents = extractor.add_noise(extractor.encode(images))
    latent_hw = tuple(latents.shape[-2:])
    condition = extractor.condition.expand(latents.shape[0], -1, -1)
    spec = config.captured

    def ours() -> dict[Grid, torch.Tensor]:
        with capture_attention(backbone.unet, spec, latent_hw) as store:
            extractor.run_unet(latents, extractor.timestep, condition)
        return store.means("self")

    def straightforward() -> dict[Grid, torch.Tensor]:
        with keep_all_heads(backbone.unet) as kept:
            extractor.run_unet(latents, extractor.timestep, condition)
        return level_means(kept, AttentionStore(spec, latent_hw))

    ours(), straightforward()  # warm-up
    mine, ours_ms, ours_peak = timed(ours, backbone.device)
    theirs, plain_ms, plain_peak = timed(straightforward, backbone.device)
    difference = max(float((mine[grid] - theirs[grid]).abs().max()) for grid in mine)
    per_image = len(images)
    return StageComparison(
        "unet", "diffusers get_attention_scores, every layer's per-head maps kept, averaged after the forward",
        ours_ms / per_image, plain_ms / per_image, difference, "max_abs_difference", ours_peak, plain_peak,
    )  # fmt: skip


def aggregation_levels(
    method: str, config: Any, self_attention: dict[Grid, torch.Tensor]
) -> tuple[tuple[int, ...] | None, tuple[float, ...] | None]:
    """(levels, weights) that ``method`` with ``config`` aggregates from ``self_attention``: NCut's
    default is its three largest levels (``ncut_levels``), any other method's its ``resolutions``
    (None: all); the weights are the config's ``resolution_weights`` (None: by size)."""
    if method == "ncut":
        from dsseg.methods.ncut import ncut_levels

        levels = ncut_levels(list(self_attention), config)
    else:
        levels = getattr(config, "resolutions", None)
    return levels, getattr(config, "resolution_weights", None)


def compare_aggregate(self_attention: dict[Grid, torch.Tensor], resolutions=None, weights=None) -> StageComparison:
    """One image's aggregation, ours (float32 torch) against float64 NumPy level by level, with the
    same levels and weights."""
    device = next(iter(self_attention.values())).device
    one = {grid: maps[:1] for grid, maps in self_attention.items()}
    levels = select_levels(list(one), resolutions, weights)
    if any(grid[0] != grid[1] for grid in levels):
        raise ValueError("the float64 aggregation takes square levels only (geometry center_crop or squash)")
    aggregate_self_attention(one, resolutions, weights)  # warm-up
    (mine, target), ours_ms, _ = timed(lambda: aggregate_self_attention(one, resolutions, weights), device)
    largest_first = sorted(levels, key=lambda grid: -grid[0])
    arrays = {grid[0]: one[grid][0].double().cpu().numpy() for grid in largest_first}
    reference_aggregate = load_oracle("diffseg_reference").reference_aggregate
    theirs, plain_ms, _ = timed(
        lambda: reference_aggregate(arrays, [levels[grid] for grid in largest_first]), torch.device("cpu")
    )
    n = target[0] * target[1]
    difference = float(np.abs(mine[0].double().cpu().numpy() - theirs.reshape(n, n)).max())
    return StageComparison(
        "aggregate", "float64 NumPy, level by level", ours_ms, plain_ms, difference, "max_abs_difference"
    )


def compare_upsample(labels: np.ndarray, geometry: Geometry) -> StageComparison:
    """Model-frame labels → original size: ours renumbers on the model frame and gathers once; the
    straightforward way gathers the full-size map and renumbers it there. Difference: pixels that differ."""
    cpu = torch.device("cpu")

    def straightforward() -> np.ndarray:
        full = labels_to_original(labels, geometry)
        return np.unique(full, return_inverse=True)[1].reshape(full.shape).astype(np.int32)

    (mine, _), ours_ms, _ = timed(lambda: compact_to_original(labels, geometry), cpu)
    theirs, plain_ms, _ = timed(straightforward, cpu)
    difference = float((mine != theirs).mean())
    return StageComparison(
        "upsample", "gather at full size, then renumber", ours_ms, plain_ms, difference, "fraction_of_pixels_differing"
    )


def compare_rle(labels: np.ndarray) -> StageComparison:
    """COCO RLE of every segment: ours from one pass over the label runs against one binary mask
    per segment through ``pycocotools.mask.encode``. Difference: segments whose RLE differs."""
    cpu = torch.device("cpu")

    def straightforward() -> list[dict]:
        out = []
        for value in np.unique(labels):
            rle = mask_utils.encode(np.asfortranarray(labels == value).astype(np.uint8))
            out.append(
                {
                    "counts": rle["counts"].decode(),
                    "area": int(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                }
            )
        return out

    mine, ours_ms, _ = timed(lambda: encode_labels(labels), cpu)
    theirs, plain_ms, _ = timed(straightforward, cpu)
    differing = sum(a["rle"]["counts"] != b["counts"] or a["area"] != b["area"] for a, b in zip(mine, theirs)) + abs(
        len(mine) - len(theirs)
    )
    return StageComparison(
        "rle",
        "one binary mask per segment through pycocotools",
        ours_ms,
        plain_ms,
        differing / max(len(theirs), 1),
        "fraction_of_segments_differing",
    )
