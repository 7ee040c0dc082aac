"""One UNet step with attention capture: images → ``AttentionBundle``.

Steps per batch: VAE posterior mean × scaling factor; then one of three noise modes —
``none`` (the clean latent at timestep t; DiffSeg uses t = 300), ``noise`` (seeded Gaussian
noise added at t, as DiffSegmenter at t = 100), ``ddim_inversion`` (deterministic DDIM
inversion for n of N steps, as Diffusing, Walking and Cutting with 10 of 50); then one
UNet call at the resulting timestep with the conditioning prompt (empty by default),
capturing head-averaged attention.

With candidate classes (``classes``, ``vocabulary`` or per image at call time) the UNet is
conditioned on prompts that name them and the bundle carries each class's cross-attention map:
- ``class_template`` set (open vocabulary, DiffSegmenter): one prompt per class; the classes of
  the batch's images are stacked in the batch dimension, ``class_batch_size`` prompts per UNet
  call, each on its image's noised latent. Each class's maps are also refined by the
  self-attention of its own prompt's call (``class_refined``, as DiffSegmenter's code); the
  bundle's self-attention is the mean over an image's prompts.
- otherwise (naming the segments of DiffSeg/NCut): one joint prompt per image that names its
  classes (or the ``prompt`` caption, which must contain them), in the image's single UNet call.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from dsseg.errors import ConfigError
from dsseg.model.attention import Grid, attention_layers, capture_attention, level_grids
from dsseg.model.backbone import AnyBackbone
from dsseg.model.config import (
    DEFAULT_TIMESTEP,
    MMDIT_BLOCK,
    ExtractConfig,
    check_class_names,
    parse_feature_layer,
    per_image_classes,
)
from dsseg.model.early_stop import last_read_module, stop_after
from dsseg.model.prompts import ImageTexts, PromptPlan, class_prompt_plan, joint_prompt_plans
from dsseg.timing import StageTimer

CONDITION_CACHE = 512  # class-prompt text states kept per extractor (a vocabulary's worth)


def to_model_input(batch: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(B, h, w, 3) uint8 prepared images → (B, 3, h, w) in [-1, 1] on ``device`` (pinned copies to CUDA)."""
    pixels = torch.as_tensor(batch)
    if device.type == "cuda":
        pixels = pixels.pin_memory()
    pixels = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2)
    return (pixels.float() / 127.5 - 1.0).to(dtype).contiguous()


@dataclass(frozen=True)
class AttentionBundle:
    """Captured attention of a batch.

    ``self_attention[(h, w)]``: (B, N, N) float32, N = h·w, rows sum to 1 (query × key), the mean
    over heads and over the level's layers; largest grid first. ``cross_attention[(h, w)]``:
    (B, N, T) float32 over T text tokens (empty unless requested; not kept with class prompts).
    ``timestep``: the UNet step used (the first of ``timesteps``, the steps whose captures were
    averaged). With candidate classes, per image i: ``class_names[i]`` (C_i
    names) and ``class_attention[i][(h, w)]``: (C_i, N) float32 cross-attention of each class (its
    tokens' columns read out per ``PromptPlan.readout``), mean over heads and the level's layers.
    """

    self_attention: dict[Grid, torch.Tensor]
    cross_attention: dict[Grid, torch.Tensor]
    latent_hw: Grid
    timestep: int
    config: ExtractConfig = field(default_factory=ExtractConfig)
    class_names: tuple[tuple[str, ...], ...] | None = None
    class_attention: tuple[dict[Grid, torch.Tensor], ...] | None = None
    images: torch.Tensor | None = None  # (B, 3, h, w) model input in [-1, 1], for image-aware refinement
    timesteps: tuple[int, ...] = ()
    # With class prompts (one class per prompt), per image i and level (h, w): (C_i, N_max) float32,
    # Â_c · up(class map of c at that level), Â_c the largest level's self-attention of class c's own
    # prompt call and up the bilinear upsampling to the largest grid (``upsample_class_maps``).
    class_refined: tuple[dict[Grid, torch.Tensor], ...] | None = None
    source_hw: tuple[Grid, ...] | None = None  # per image, the (h, w) pixels its model input was resized from
    features: torch.Tensor | None = None  # (B, N, C) float32 output of the config's feature_layer
    feature_grid: Grid | None = None  # its token grid (h, w), N = h·w
    # Intermediates methods may keep between calls on this same bundle (``dsseg.methods.base.memoised``):
    # None (the default, and in jobs) recomputes every time; the explorer sets a dict to re-segment fast.
    memo: dict | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        if self.features is not None:
            return self.features.shape[0]
        if self.class_names is not None:
            return len(self.class_names)
        for maps in (self.self_attention, self.cross_attention):
            if maps:
                return next(iter(maps.values())).shape[0]
        raise ValueError("the bundle holds no attention, features or class maps")

    def image(self, index: int) -> AttentionBundle:
        """The bundle of one image of the batch (views, B = 1)."""
        pick = slice(index, index + 1)
        return AttentionBundle(
            self_attention={g: a[pick] for g, a in self.self_attention.items()},
            cross_attention={g: a[pick] for g, a in self.cross_attention.items()},
            latent_hw=self.latent_hw,
            timestep=self.timestep,
            config=self.config,
            class_names=None if self.class_names is None else self.class_names[pick],
            class_attention=None if self.class_attention is None else self.class_attention[pick],
            images=None if self.images is None else self.images[pick],
            timesteps=self.timesteps,
            class_refined=None if self.class_refined is None else self.class_refined[pick],
            source_hw=None if self.source_hw is None else self.source_hw[pick],
            features=None if self.features is None else self.features[pick],
            feature_grid=self.feature_grid,
        )


def upsample_class_maps(maps: torch.Tensor, grid: Grid, target: Grid) -> torch.Tensor:
    """Class maps (C, h·w) on ``grid`` → (C, H·W) on ``target``, bilinear with half-pixel centres."""
    if tuple(grid) == tuple(target):
        return maps.float()
    up = torch.nn.functional.interpolate(
        maps.float().reshape(-1, 1, *grid), size=tuple(target), mode="bilinear", align_corners=False
    )
    return up.reshape(maps.shape[0], -1)


def inversion_timesteps(scheduler, num_inference_steps: int, steps: int) -> list[int]:
    """The first ``steps`` of the scheduler's ``num_inference_steps`` DDIM timesteps, ascending
    (SD v1, 10 of 50: 1, 21, …, 181)."""
    scheduler.set_timesteps(num_inference_steps)
    ascending = sorted(int(t) for t in scheduler.timesteps)
    return ascending[:steps]


def flow_sigma(scheduler, num_inference_steps: int, step: int) -> tuple[float, float]:
    """(σ, timestep) of inference step ``step`` (Python indexing) of ``num_inference_steps`` in a
    flow-matching scheduler, its shift applied (SD3, 28 steps, shift 3: step −8 → σ ≈ 0.515, t ≈ 515.1)."""
    if not hasattr(scheduler, "sigmas") or hasattr(scheduler, "alphas_cumprod"):
        raise ConfigError(
            "noise", "'flow' needs a flow-matching backbone (SD3 / SD3.5); UNets take none, noise or ddim_inversion"
        )
    if scheduler.config.get("use_dynamic_shifting", False):
        raise ConfigError("noise", "'flow' does not support schedulers with dynamic shifting (FLUX-class)")
    scheduler.set_timesteps(num_inference_steps)
    index = step % num_inference_steps  # sigmas has one more entry (the final 0) than timesteps
    return float(scheduler.sigmas[index]), float(scheduler.timesteps[index])


def ddim_invert(
    latents: torch.Tensor,
    predict_noise: Callable[[torch.Tensor, int], torch.Tensor],
    alphas_cumprod: torch.Tensor,
    timesteps: Sequence[int],
    start_alpha: float,
) -> torch.Tensor:
    """Deterministic DDIM inversion: the clean latent (ᾱ = ``start_alpha``) → latent at timesteps[-1].

    Each step predicts ε at the next timestep t from the current latent and moves along the
    DDIM trajectory: x_t = √ᾱ_t·x̂₀ + √(1−ᾱ_t)·ε, with x̂₀ = (x − √(1−ᾱ_prev)·ε)/√ᾱ_prev.
    latents (B, C, h, w); returns the same shape and dtype.
    """
    alpha_prev = start_alpha
    x = latents
    for t in timesteps:
        eps = predict_noise(x, t)
        alpha_t = float(alphas_cumprod[t])
        x0 = (x - math.sqrt(1.0 - alpha_prev) * eps) / math.sqrt(alpha_prev)
        x = math.sqrt(alpha_t) * x0 + math.sqrt(1.0 - alpha_t) * eps
        alpha_prev = alpha_t
    return x


def feature_module(denoiser, spec: str) -> torch.nn.Module:
    """The module whose output ``spec`` names (see ``Capture``): in a UNet the self-attention layer
    ``"BLOCK:INDEX"``; in an MM-DiT the transformer block ``"layer:K"``."""
    block, index = parse_feature_layer(spec)
    if hasattr(denoiser, "transformer_blocks"):
        blocks = denoiser.transformer_blocks
        if block != MMDIT_BLOCK or not -len(blocks) <= index < len(blocks):
            raise ConfigError(
                "feature_layer",
                f"{spec!r}: an MM-DiT names its {len(blocks)} blocks 'layer:0' … 'layer:{len(blocks) - 1}'",
            )
        return blocks[index]
    if block == MMDIT_BLOCK:
        raise ConfigError(
            "feature_layer", f"{spec!r} names an MM-DiT block; on a UNet give BLOCK:INDEX, e.g. 'down:-1'"
        )
    unet = denoiser
    layers = [layer for layer in attention_layers(unet) if layer.kind == "self" and layer.block == block]
    if not -len(layers) <= index < len(layers):
        raise ConfigError("feature_layer", f"{spec!r}: the {block} blocks hold {len(layers)} self-attention layers")
    return unet.get_submodule(layers[index].name.removesuffix(".processor"))


@contextmanager
def keep_output(module: torch.nn.Module | None, kept: list[torch.Tensor]):
    """Within the block, each forward of ``module`` (if any) appends its output to ``kept``."""
    if module is None:
        yield
        return

    def keep(_module, _inputs, output) -> None:
        # An MM-DiT block returns (text states, image states): the image tokens are the features.
        kept.append((output[1] if isinstance(output, tuple) else output).detach())

    handle = module.register_forward_hook(keep)
    try:
        yield
    finally:
        handle.remove()


def token_grids(backbone, latent_hw: Grid) -> list[Grid]:
    """The token grids of ``backbone``'s attention for a latent of ``latent_hw``: the UNet levels
    (h, w), (h/2, w/2), …; an MM-DiT's one grid, the latent over its patch size."""
    if backbone.family == "mmdit":
        patch = backbone.patch_size
        if latent_hw[0] % patch or latent_hw[1] % patch:
            raise ValueError(f"latent size {latent_hw} must be divisible by the patch size {patch}")
        return [(latent_hw[0] // patch, latent_hw[1] // patch)]
    return level_grids(latent_hw)


@contextmanager
def capture(backbone, spec, latent_hw: Grid):
    """``capture_attention`` on a UNet, ``capture_joint_attention`` on an MM-DiT: yields the store."""
    if backbone.family == "mmdit":
        from dsseg.model.joint_attention import capture_joint_attention

        with capture_joint_attention(backbone.denoiser, spec, token_grids(backbone, latent_hw)[0]) as store:
            yield store
    else:
        with capture_attention(backbone.denoiser, spec, latent_hw) as store:
            yield store


def feature_grid(backbone, latent_hw: Grid, tokens: int) -> Grid:
    """The token grid (h, w) of ``backbone``'s feature map with ``tokens`` positions."""
    for grid in token_grids(backbone, latent_hw):
        if grid[0] * grid[1] == tokens:
            return grid
    raise ValueError(f"{tokens} feature tokens match no level of the latent grid {latent_hw}")


class AttentionExtractor:
    """Runs ``ExtractConfig`` on a backbone: call with a (B, 3, h, w) batch in [-1, 1]. A capturing
    forward stops after the last module it reads (``early_stop``; ``dsseg.model.early_stop``)."""

    early_stop = True

    def __init__(self, backbone: AnyBackbone, config: ExtractConfig) -> None:
        self.backbone = backbone
        self.config = config
        self.condition = backbone.encode_prompt(config.prompting.prompt)  # (1, 77, D); SDXL (1, 78, D)
        layer = config.capture.feature_layer
        # The module whose output ``feature_layer`` names, found now: a bad index fails before any image.
        self.feature_module = None if layer is None else feature_module(backbone.denoiser, layer)
        self._class_conditions: OrderedDict[tuple[str, tuple[int, ...]], torch.Tensor] = OrderedDict()
        self._stop_points: dict[Grid, torch.nn.Module | None] = {}  # per latent size: last_read_module
        scheduler = backbone.scheduler
        # A flow-matching scheduler has no ᾱ: only noise="flow" (or none) reads its schedule.
        alphas = getattr(scheduler, "alphas_cumprod", None)
        self.alphas_cumprod = None if alphas is None else alphas.to(torch.float64)
        noising = config.noising
        self.sigma: float | None = None
        if noising.noise == "ddim_inversion":
            self.inversion = inversion_timesteps(scheduler, noising.num_inference_steps, noising.inversion_steps)
            self.timesteps = (self.inversion[-1],)
        elif noising.noise == "flow":
            self.inversion = []
            self.sigma, timestep = flow_sigma(scheduler, noising.num_inference_steps, noising.flow_step)
            self.timesteps = (timestep,)
        else:
            self.inversion = []
            self.timesteps = noising.timesteps or (DEFAULT_TIMESTEP if noising.timestep is None else noising.timestep,)

    @property
    def timestep(self) -> int:
        """The first (or only) step of ``timesteps``: the one a single-step UNet call uses."""
        return self.timesteps[0]

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor,
        timer: StageTimer | None = None,
        classes: Sequence[Sequence[str] | None] | None = None,
        texts: Sequence[ImageTexts | None] | None = None,
        sizes: Sequence[Grid] | None = None,
    ) -> AttentionBundle:
        """``classes``: per image, its candidate class names (None: the config's), used when the
        config prompts with classes; ignored otherwise. ``texts``: per image, its captions (the
        joint prompt naming its classes, or continuations of its class prompts). ``sizes``: per
        image, the (h, w) pixels its model input was resized from (kept as ``source_hw``)."""
        timer = timer or StageTimer(images.device)
        with timer.stage("encode"):
            latents = self.encode(images)
        with timer.stage("invert") if self.config.noising.noise != "none" else nullcontext():
            noised = self.noised_latents(latents)
        latent_hw = tuple(latents.shape[-2:])
        if sizes is not None and len(sizes) != len(latents):
            raise ValueError(f"{len(sizes)} image sizes given for {len(latents)} images")
        bundle = AttentionBundle(
            {}, {}, latent_hw, self.timestep, self.config, images=images, timesteps=self.timesteps,
            source_hw=None if sizes is None else tuple((int(h), int(w)) for h, w in sizes),
        )  # fmt: skip
        if self.config.uses_classes:
            with timer.stage("unet"):
                names = self.class_lists(len(latents), classes)
                return self._class_forward(noised, names, bundle, texts or [None] * len(names))
        with timer.stage("unet"):
            self_maps, cross_maps, features = self.capture_stacked(
                noised, self.condition.expand(latents.shape[0], -1, -1)
            )
        grid = None if features is None else feature_grid(self.backbone, latent_hw, features.shape[1])
        return replace(
            bundle, self_attention=self_maps, cross_attention=cross_maps, features=features, feature_grid=grid
        )

    def noised_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Clean latents (B, C, h, w) → what the UNet sees at each of ``timesteps``, (T, B, C, h, w)."""
        if self.config.noising.noise == "ddim_inversion":
            return self.add_noise(latents)[None]
        return torch.stack([self.add_noise(latents, t) for t in self.timesteps])

    def capture_stacked(
        self, noised: torch.Tensor, condition: torch.Tensor
    ) -> tuple[dict[Grid, torch.Tensor], dict[Grid, torch.Tensor], torch.Tensor | None]:
        """One UNet call on the T timesteps × k latents of ``noised`` (T, k, C, h, w), stacked in
        its batch, with text states ``condition`` (k, 77, D) → the captured self- and
        cross-attention means per level, (k, N, N) and (k, N, 77), and the ``feature_layer``'s
        output (k, N, C) float32 (None without one), each averaged over the timesteps."""
        steps, k = noised.shape[:2]
        timesteps = (
            torch.tensor(self.timesteps, device=noised.device).repeat_interleave(k) if steps > 1 else self.timestep
        )
        kept: list[torch.Tensor] = []
        latent_hw = tuple(noised.shape[-2:])
        if latent_hw not in self._stop_points:  # the same for every batch of one input size
            self._stop_points[latent_hw] = last_read_module(
                self.backbone, self.config.captured, latent_hw, self.feature_module
            )
        last = self._stop_points[latent_hw]
        with (
            capture(self.backbone, self.config.captured, latent_hw) as store,
            keep_output(self.feature_module, kept),
            stop_after(last if self.early_stop else None),  # nothing after the last module read is used
        ):
            self.run_unet(noised.flatten(0, 1), timesteps, condition.repeat(steps, 1, 1))

        def over_timesteps(maps: torch.Tensor) -> torch.Tensor:
            return maps.view(steps, k, *maps.shape[1:]).mean(0) if steps > 1 else maps

        self_maps = {grid: over_timesteps(m) for grid, m in store.means("self").items()}
        cross_maps = {grid: over_timesteps(m) for grid, m in store.means("cross").items()}
        return self_maps, cross_maps, over_timesteps(kept[0].float()) if kept else None

    def class_lists(self, batch: int, classes: Sequence[Sequence[str] | None] | None) -> list[tuple[str, ...]]:
        """Each image's candidate classes: its own list where given, else the config's (an image
        without any is checked by ``dsseg.checks.check_candidates``)."""
        lists = per_image_classes(self.config.prompting.classes, classes, batch)
        for names in lists:
            check_class_names(names)
        return lists

    def prompt_plans(self, names: Sequence[str], texts: ImageTexts | None = None) -> list[PromptPlan]:
        """The prompts one image runs: one per class with a template (the plain prompt when it has
        no classes), else joint prompts (one, unless the names overflow CLIP's 77 tokens; the
        image's caption when ``texts`` holds one)."""
        config, tokenizer = self.config.prompting, self.backbone.tokenizer
        texts = texts or ImageTexts()
        if config.class_template is None:
            if texts.caption:
                return joint_prompt_plans(tokenizer, names, texts.caption, [texts.phrases.get(n, n) for n in names])
            return joint_prompt_plans(
                tokenizer, names, config.prompt, prefix=config.joint_prefix, separator=config.joint_separator
            )
        if not names:
            return [PromptPlan(config.prompt, ())]
        descriptors = {} if config.caption_descriptors else dict(config.descriptors)
        return [
            class_prompt_plan(
                tokenizer,
                config.class_template,
                config.spelled(name),
                descriptors.get(name, ()),
                texts.continuations.get(name, ""),
                config.class_tokens,
                config.participle_offset,
                weight_last_word=config.class_weighting == "compel",
            )
            for name in names
        ]

    def _class_forward(
        self,
        noised: torch.Tensor,
        names: list[tuple[str, ...]],
        bundle: AttentionBundle,
        texts: Sequence[ImageTexts | None],
    ) -> AttentionBundle:
        """UNet calls on the class prompts of every image (``noised``: (T, B, C, h, w), the images'
        latents at each timestep), ``class_batch_size`` prompts per call with a template (else as
        many as images), each at every timestep; self-attention averaged over each image's prompts.
        With a template, each class's maps are also refined by its own prompt's self-attention."""
        work = [(i, plan) for i, image_names in enumerate(names) for plan in self.prompt_plans(image_names, texts[i])]
        # Joint prompts: as many per call as images (one each, unless a vocabulary overflows 77 tokens).
        per_class = self.config.prompting.class_template is not None
        size = self.config.prompting.class_batch_size if per_class else len(names)
        self_sums: dict[Grid, torch.Tensor] = {}
        parts: list[dict[Grid, list[torch.Tensor]]] = [{} for _ in names]
        refined: list[dict[Grid, list[torch.Tensor]]] = [{} for _ in names]
        prompts_per_image = torch.zeros(len(names), device=noised.device)
        for start in range(0, len(work), size):
            chunk = work[start : start + size]
            index = torch.tensor([i for i, _ in chunk], device=noised.device)
            condition = torch.cat([self._class_condition(plan) for _, plan in chunk])
            self_maps, cross_maps, _ = self.capture_stacked(noised[:, index], condition)
            for grid, maps in self_maps.items():
                if grid not in self_sums:
                    self_sums[grid] = maps.new_zeros(len(names), *maps.shape[1:])
                self_sums[grid].index_add_(0, index, maps)
            prompts_per_image.index_add_(0, index, torch.ones_like(index, dtype=prompts_per_image.dtype))
            largest = max(self_maps, key=lambda g: g[0] * g[1]) if self_maps else None
            for grid, cross in cross_maps.items():  # (k, N, 77)
                for row, (i, plan) in enumerate(chunk):
                    maps = cross[row] @ plan.readout(cross.shape[-1]).to(cross)  # (N, K)
                    parts[i].setdefault(grid, []).append(maps)
                    if per_class and plan.classes and largest is not None:
                        up = upsample_class_maps(maps.T, grid, largest)  # (K, N_max)
                        refined[i].setdefault(grid, []).append(up @ self_maps[largest][row].float().T)
        return replace(
            bundle,
            self_attention={grid: total / prompts_per_image[:, None, None] for grid, total in self_sums.items()},
            class_names=tuple(names),
            class_attention=tuple(
                {grid: torch.cat(image_parts[grid], dim=1).T.contiguous() for grid in image_parts}
                for image_parts in parts
            ),
            class_refined=tuple({grid: torch.cat(r[grid]) for grid in r} for r in refined) if per_class else None,
        )

    def _class_condition(self, plan: PromptPlan) -> torch.Tensor:
        """(1, 77, D) text states of ``plan.text`` with the class-name tokens re-weighted by the class
        weight w (``class_weighting``: ``compel``, e + w·(z − e) with e the empty prompt's states;
        ``scale``, w·z); the last ``CONDITION_CACHE`` prompts are kept."""
        key = (plan.text, plan.weighted_positions)
        if key in self._class_conditions:
            self._class_conditions.move_to_end(key)
            return self._class_conditions[key]
        condition = self.backbone.encode_prompt(plan.text, cache=False)
        weight = self.config.prompting.class_weight
        if weight != 1.0 and plan.weighted_positions:
            condition = condition.clone()
            positions = list(plan.weighted_positions)
            if self.config.prompting.class_weighting == "compel":
                empty = self.backbone.encode_prompt("")[:, positions]
                condition[:, positions] = empty + weight * (condition[:, positions] - empty)
            else:
                condition[:, positions] *= weight
        self._class_conditions[key] = condition
        if len(self._class_conditions) > CONDITION_CACHE:
            self._class_conditions.popitem(last=False)
        return condition

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) in [-1, 1] → (VAE posterior mean − shift) × scaling factor, (B, C, h/8, w/8)
        (C = 4; SD3: 16 channels, shift 0.0609)."""
        backbone = self.backbone
        images = images.to(backbone.device, next(backbone.vae.parameters()).dtype)  # float32 for an upcast VAE
        latents = (backbone.vae.encode(images).latent_dist.mean - backbone.latent_shift) * backbone.latent_scaling
        return latents.to(backbone.dtype)

    def add_noise(self, latents: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """Apply the configured noise mode to clean latents, at ``timestep`` (default: the first of
        ``timesteps``; ddim_inversion ends at its own)."""
        if self.config.noising.noise == "none":
            return latents
        if self.config.noising.noise in ("noise", "flow"):
            generator = torch.Generator().manual_seed(self.config.noising.seed)
            noise = torch.randn((1, *latents.shape[1:]), generator=generator).to(latents)
            if self.sigma is not None:  # flow matching
                return (1.0 - self.sigma) * latents + self.sigma * noise.expand_as(latents)
            alpha = float(self.alphas_cumprod[self.timestep if timestep is None else timestep])
            return math.sqrt(alpha) * latents + math.sqrt(1.0 - alpha) * noise.expand_as(latents)
        scheduler_config = self.backbone.scheduler.config
        start_alpha = 1.0 if scheduler_config.set_alpha_to_one else float(self.alphas_cumprod[0])
        return ddim_invert(latents, self._predict_noise, self.alphas_cumprod, self.inversion, start_alpha)

    def run_unet(self, latents: torch.Tensor, timestep: int | torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """One network call (``Backbone.denoise``): latents (B, C, h, w) at ``timestep`` (one, or (B,)
        per latent) with conditions from ``encode_prompt`` → its output, same shape as latents."""
        return self.backbone.denoise(latents, timestep, condition)

    def _predict_noise(self, latents: torch.Tensor, timestep: int) -> torch.Tensor:
        """ε predicted at ``timestep``, converting v- or x₀-prediction models (SD 2.x) to ε."""
        output = self.run_unet(latents, timestep, self.condition.expand(latents.shape[0], -1, -1))
        kind = self.backbone.scheduler.config.prediction_type
        alpha = float(self.alphas_cumprod[timestep])
        if kind == "epsilon":
            return output
        if kind == "v_prediction":
            return math.sqrt(alpha) * output + math.sqrt(1.0 - alpha) * latents
        if kind == "sample":
            return (latents - math.sqrt(alpha) * output) / math.sqrt(1.0 - alpha)
        raise ValueError(f"unsupported prediction_type {kind!r}")
