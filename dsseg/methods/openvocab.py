"""DiffSegmenter (Wang et al.): open-vocabulary labels from cross-attention refined by
self-attention; and naming the segments of the unsupervised methods.

Score maps of an image's candidate classes (``AttentionBundle.class_attention``), per class c, as
DiffSegmenter's released code (``open_vocabulary/*/ptp_stable_*.py``) computes them:
1. at each level (h, w), its cross-attention map bilinearly upsampled to the largest grid
   (H, W) (half-pixel centres) and min–max normalised over space;
2. levels fused with ``level_weights`` (coarsest first: 0.3, 0.5, 0.1, 0.1 for 8/16/32/64);
3. refined: Â_c · vec(fused_c), Â_c the (N, N) self-attention of the largest level in the UNet
   call of c's own prompt (mean over that level's layers and heads). The bundle carries
   Â_c·up(map) per level (``class_refined``); since Â_c's rows sum to 1, Â_c·minmax(u) =
   (Â_c·u − min u)/(max u − min u), so steps 1–3 are exact for any level weights. Bundles
   without it (cached attention) use the self-attention they hold, the mean over the prompts;
4. ``score_size="image"`` (released): bilinearly resized to the image's size (the pixels the
   model input was resized from), then min–max normalised there; ``"model"``: min–max
   normalised, then upsampled ×``upsample_factor`` to the model input's pixels.

Labels: each pixel takes the arg-max of [``background_threshold``, M_1, …, M_C]: 0 is background,
c is class c (ties go to the background, as ``np.argmax`` in the released evaluation); with
``ignore_margin``, pixels whose two best channels differ by less become uncertain (255 in
``labels_from_scores``; the segment named "ignore" in a ``MethodResult``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from dsseg.methods.base import MethodResult, memoised
from dsseg.methods.configs import LEVEL_WEIGHTS, OpenVocabConfig
from dsseg.methods.dense_crf import dense_crf
from dsseg.methods.pamr import pamr
from dsseg.model.attention import Grid
from dsseg.model.extract import AttentionBundle, upsample_class_maps
from dsseg.model.vocabularies import BACKGROUND_NAME, IGNORE_LABEL, IGNORE_NAME
from dsseg.timing import StageTimer

_EPS = 1e-12


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """(C, …) → each map rescaled to [0, 1] over its own values (a constant map → 0)."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(_EPS)).reshape(maps.shape)


def fused_level_weights(grids: Sequence[Grid], level_weights: Sequence[float]) -> tuple[float, ...]:
    """The weights of ``grids`` (coarsest first), normalised to sum 1; the default weights on fewer
    levels (SDXL: 1/2 and 1/4 of the latent) take the finest ones."""
    if tuple(level_weights) == LEVEL_WEIGHTS and len(grids) < len(LEVEL_WEIGHTS):
        level_weights = LEVEL_WEIGHTS[-len(grids) :]
    if len(level_weights) != len(grids):
        raise ValueError(f"{len(level_weights)} level weights for {len(grids)} cross-attention levels {list(grids)}")
    total = float(sum(level_weights))
    return tuple(float(w) / total for w in level_weights)


def fuse_levels(
    class_attention: Mapping[Grid, torch.Tensor],
    level_weights: Sequence[float] = LEVEL_WEIGHTS,
    refined: Mapping[Grid, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-level class maps {(h, w): (C, h·w)} → (C, H, W) float32 on the largest grid: each level
    upsampled (bilinear), min–max normalised, then weighted (coarsest level first; steps 1–2).
    With ``refined`` ({(h, w): (C, H·W)}, Â_c·up(map) per level): the same fusion of the refined
    maps, each normalised by its unrefined map's min and max (step 3, exact for row-stochastic Â)."""
    grids = sorted(class_attention, key=lambda g: g[0] * g[1])
    target = grids[-1]
    fused = None
    for grid, weight in zip(grids, fused_level_weights(grids, level_weights)):
        maps = upsample_class_maps(class_attention[grid], grid, target)
        low = maps.min(dim=1, keepdim=True).values
        spread = (maps.max(dim=1, keepdim=True).values - low).clamp_min(_EPS)
        part = ((maps if refined is None else refined[grid].float()) - low) / spread * weight
        fused = part if fused is None else fused + part
    assert fused is not None
    return fused.reshape(-1, *target)


def refine_scores(maps: torch.Tensor, self_attention: torch.Tensor) -> torch.Tensor:
    """(C, H, W) maps and (N, N) self-attention (rows = queries, N = H·W) → (C, H, W):
    minmax(Â · vec(map)), each pixel's score the attention-weighted mean of the scores it attends to."""
    classes, height, width = maps.shape
    refined = maps.reshape(classes, height * width) @ self_attention.float().T
    return minmax(refined).reshape(classes, height, width)


def class_scores(bundle: AttentionBundle, config: OpenVocabConfig) -> torch.Tensor:
    """One image's (C, H, W) score maps on the largest latent grid (steps 1–3; not normalised
    after the refinement by the class's own prompt, min–max normalised after the mean one)."""
    maps = bundle.class_attention[0]
    own = bundle.class_refined[0] if bundle.class_refined is not None else None
    if config.refine and own:
        return fuse_levels(maps, config.level_weights, own)
    fused = fuse_levels(maps, config.level_weights)
    if not config.refine or fused.shape[0] == 0:
        return fused
    target = max(bundle.self_attention, key=lambda g: g[0] * g[1])
    if target != tuple(fused.shape[1:]):
        raise ValueError(f"self-attention grid {target} differs from the cross-attention grid {tuple(fused.shape[1:])}")
    return refine_scores(fused, bundle.self_attention[target][0])


def upsample_scores(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) → (C, h, w), bilinear with half-pixel centres."""
    if scores.shape[0] == 0:
        return scores.new_zeros(0, *size)
    return F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]


def labels_from_scores(
    scores: torch.Tensor, background_threshold: float, ignore_margin: float | None = None
) -> torch.Tensor:
    """(C, h, w) class scores → (h, w) int64: 0 background (no class above the threshold),
    c for class c − 1's map, ``IGNORE_LABEL`` where the best channel leads by less than the margin."""
    return labels_from_channels(score_channels(scores, background_threshold), ignore_margin)


def score_channels(scores: torch.Tensor, background_threshold: float) -> torch.Tensor:
    """(C, h, w) class scores → (1 + C, h, w): the constant background score, then the classes."""
    background = scores.new_full((1, *scores.shape[1:]), background_threshold)
    return torch.cat([background, scores])


def labels_from_channels(channels: torch.Tensor, ignore_margin: float | None = None) -> torch.Tensor:
    """(1 + C, h, w) background and class channels → (h, w) int64 labels: the best channel, or
    ``IGNORE_LABEL`` where it leads the runner-up by less than ``ignore_margin``."""
    if ignore_margin is None or channels.shape[0] < 2:
        return channels.argmax(dim=0)
    if channels.shape[0] > IGNORE_LABEL:
        raise ValueError(
            f"an ignore band needs fewer than {IGNORE_LABEL} classes per image (label {IGNORE_LABEL} marks it); got {len(channels) - 1}"
        )
    top = channels.topk(2, dim=0)
    labels = top.indices[0]
    labels[top.values[0] - top.values[1] < ignore_margin] = IGNORE_LABEL
    return labels


def segment_means(labels: torch.Tensor, maps: torch.Tensor, segments: int) -> torch.Tensor:
    """Mean of each of C maps over each segment: labels (h, w) in 0..S−1, maps (C, h, w) → (S, C)."""
    flat = labels.reshape(-1)
    sums = maps.new_zeros(segments, maps.shape[0]).index_add_(0, flat, maps.reshape(maps.shape[0], flat.numel()).T)
    counts = torch.bincount(flat, minlength=segments).clamp_min(1)
    return sums / counts[:, None].to(sums)


def segment_openvocab(
    bundle: AttentionBundle, config: OpenVocabConfig, timer: StageTimer | None = None
) -> list[MethodResult]:
    """Per image: labels at the model input's pixels; segment 0 is background, then one segment per
    class present (named), and "ignore" for uncertain pixels when ``ignore_margin`` is set."""
    if bundle.class_attention is None:
        raise ValueError(
            "openvocab needs class prompts: give classes=[...] (or vocabulary=...) or a per-image class list"
        )
    timer = timer or StageTimer()
    results = []
    for index in range(len(bundle)):
        image = bundle.image(index)
        names = list(image.class_names[0])
        with timer.stage("aggregate"):
            latent_scores = (
                memoised(
                    bundle,
                    ("class_scores", index, config.level_weights, config.refine),
                    lambda image=image: class_scores(image, config),
                )
                if names
                else torch.zeros(0, *image.latent_hw)
            )
        with timer.stage("segment"):
            scores = pixel_scores(latent_scores, image, config)
            if config.pamr_iterations and names:
                scores = refine_with_image(scores, image.images, config)
            channels = score_channels(scores, config.background_threshold)
            if config.crf_iterations and names:
                channels = crf_marginals(channels, image.images, config.crf_iterations)
            labels = labels_from_channels(channels, config.ignore_margin)
            if config.ignore_margin is not None:
                labels[labels == IGNORE_LABEL] = len(names) + 1
            means = segment_means(labels, scores, len(names) + 2)
            segment_scores = [None] + [float(means[c + 1, c]) for c in range(len(names))] + [None]
            results.append(
                MethodResult(
                    labels, names=[BACKGROUND_NAME, *names, IGNORE_NAME], scores=segment_scores, background=True
                )
            )
    return results


def pixel_scores(latent_scores: torch.Tensor, image: AttentionBundle, config: OpenVocabConfig) -> torch.Tensor:
    """One image's (C, H, W) latent scores → (C, h, w) scores in [0, 1] at the labelling size (step 4)."""
    model_size = (image.latent_hw[0] * config.upsample_factor, image.latent_hw[1] * config.upsample_factor)
    if config.score_size == "model":
        return upsample_scores(minmax(latent_scores) if latent_scores.shape[0] else latent_scores, model_size)
    size = image.source_hw[0] if image.source_hw is not None else model_size
    scores = upsample_scores(latent_scores, size)
    return minmax(scores) if scores.shape[0] else scores


def image_at(images: torch.Tensor | None, size: tuple[int, ...], needed_by: str) -> torch.Tensor:
    """One image's model input (1, 3, h', w') in [-1, 1], resized (bilinear) to ``size`` (h, w)."""
    if images is None:
        raise ValueError(f"{needed_by} needs the image: segment images (segment_image / the job), not cached attention")
    if tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return images


def refine_with_image(scores: torch.Tensor, images: torch.Tensor | None, config: OpenVocabConfig) -> torch.Tensor:
    """PAMR on one image's (C, h, w) pixel scores with its model input (1, 3, h, w)."""
    images = image_at(images, scores.shape[-2:], "pamr_iterations")
    return pamr(images.to(scores.device), scores[None], config.pamr_iterations, config.pamr_dilations)[0]


def crf_marginals(channels: torch.Tensor, images: torch.Tensor | None, iterations: int) -> torch.Tensor:
    """Dense-CRF marginals of one image's (1 + C, h, w) background and class channels, each
    pixel's channels normalised to probabilities first; same shape, on the channels' device."""
    image = image_at(images, channels.shape[-2:], "crf_iterations")[0]
    rgb = ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    probabilities = channels.float().clamp_min(0)
    probabilities = probabilities / probabilities.sum(dim=0, keepdim=True).clamp_min(_EPS)
    marginals = dense_crf(probabilities.cpu().numpy(), rgb, iterations)
    return torch.from_numpy(marginals).to(channels)


def name_segments(result: MethodResult, bundle: AttentionBundle, mode: str = "majority") -> MethodResult:
    """Name one image's segments with its classes (``bundle`` of that image): each segment takes the
    class whose fused, normalised cross-attention wins most of its pixels (``majority``; score = the
    winning share of pixels) or has the highest mean over it (``mean``; score = that mean)."""
    names = bundle.class_names[0] if bundle.class_names else ()
    if not names:
        return result
    labels = result.labels
    scores = upsample_scores(fuse_levels(bundle.class_attention[0]), tuple(labels.shape))
    segments = int(labels.max()) + 1
    if mode == "majority":
        votes = scores.argmax(dim=0).reshape(-1)
        table = torch.bincount(labels.reshape(-1) * len(names) + votes, minlength=segments * len(names)).reshape(
            segments, len(names)
        )
        share = table / table.sum(dim=1, keepdim=True).clamp_min(1)
        best, winner = share.max(dim=1)
    elif mode == "mean":
        best, winner = segment_means(labels, scores, segments).max(dim=1)
    else:
        raise ValueError(f"naming mode must be majority or mean; got {mode!r}")
    return replace(result, names=[names[int(w)] for w in winner], scores=[float(b) for b in best])
