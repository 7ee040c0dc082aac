"""One UNet step with attention capture: images → ``AttentionBundle``.

Steps per batch: VAE posterior mean × scaling factor; then one of three noise modes —
``none`` (the clean latent at timestep t; DiffSeg uses t = 300), ``noise`` (seeded Gaussian
noise added at t, as DiffSegmenter at t = 100), ``ddim_inversion`` (deterministic DDIM
inversion for n of N steps, as Diffusing, Walking and Cutting with 10 of 50); then one
UNet call at the resulting timestep with the conditioning prompt (empty by default),
capturing head-averaged attention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from dsseg.attention import BLOCKS, UNET_LEVELS, Block, CaptureSpec, Grid, capture_attention
from dsseg.backbone import Backbone
from dsseg.image import GEOMETRIES, SIDE_MULTIPLE, Geometry, GeometryMode, prepare_image
from dsseg.timing import StageTimer

LATENT_FACTOR = 8  # image pixels per latent cell in every SD VAE
NoiseMode = Literal["none", "noise", "ddim_inversion"]
NOISE_MODES: tuple[NoiseMode, ...] = ("none", "noise", "ddim_inversion")
DEFAULT_TIMESTEP = 300


@dataclass(frozen=True)
class ExtractConfig:
    """How attention is extracted from an image (all sizes in pixels, timesteps in [0, 1000)).

    ``timestep``: the UNet step for ``none``/``noise`` (default 300); with ``ddim_inversion`` it
    is fixed by the inversion (the n-th of N DDIM timesteps) and must stay None.
    ``capture_resolutions``: latent sizes whose attention is captured (None = all levels; by
    default the levels the method aggregates).
    """

    image_size: int = 512
    geometry: GeometryMode = "center_crop"
    antialias: bool = False
    noise: NoiseMode = "none"
    timestep: int | None = None
    inversion_steps: int = 10
    num_inference_steps: int = 50
    seed: int = 0
    prompt: str = ""
    cross_attention: bool = False
    blocks: tuple[Block, ...] = BLOCKS
    capture_resolutions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.image_size < SIDE_MULTIPLE or self.image_size % SIDE_MULTIPLE:
            raise ValueError(f"image_size must be a positive multiple of {SIDE_MULTIPLE}; got {self.image_size}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}; got {self.geometry!r}")
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}; got {self.noise!r}")
        if self.noise == "ddim_inversion" and self.timestep is not None:
            raise ValueError("with noise='ddim_inversion' the timestep is set by inversion_steps; leave timestep unset")
        if self.timestep is not None and not 0 <= self.timestep < 1000:
            raise ValueError(f"timestep must be in [0, 1000); got {self.timestep}")
        if not 1 <= self.inversion_steps <= self.num_inference_steps:
            raise ValueError(
                f"inversion_steps must be in [1, num_inference_steps={self.num_inference_steps}]; got {self.inversion_steps}"
            )
        # Normalise list inputs (e.g. from JSON) so configs hash and compare by value.
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if self.capture_resolutions is not None:
            object.__setattr__(self, "capture_resolutions", tuple(sorted(set(self.capture_resolutions), reverse=True)))
            check_resolutions(self.capture_resolutions, self)
        self.capture_spec()  # validates blocks

    def prepare(self, rgb: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """(H, W, 3) uint8 image → ((h, w, 3) uint8 model input, geometry) per this config."""
        return prepare_image(rgb, self.image_size, self.geometry, self.antialias)

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Attention resolutions (longer latent side per UNet level): 64, 32, 16, 8 at 512 px."""
        return tuple(self.image_size // LATENT_FACTOR // 2**level for level in range(UNET_LEVELS))

    def capture_spec(self) -> CaptureSpec:
        return CaptureSpec(
            self_attention=True, cross_attention=self.cross_attention, blocks=self.blocks, resolutions=self.capture_resolutions
        )


def check_resolutions(resolutions: tuple[int, ...], config: ExtractConfig) -> None:
    """Raise a ``ValueError`` unless every resolution is a UNet level at ``config.image_size``."""
    missing = sorted(set(resolutions) - set(config.level_sizes), reverse=True)
    if missing:
        raise ValueError(
            f"resolutions {missing} do not exist at image_size {config.image_size}: "
            f"the attention levels are {list(config.level_sizes)}"
        )


@dataclass(frozen=True)
class AttentionBundle:
    """Captured attention of a batch.

    ``self_attention[(h, w)]``: (B, N, N) float32, N = h·w, rows sum to 1 (query × key), the mean
    over heads and over the level's layers; largest grid first. ``cross_attention[(h, w)]``:
    (B, N, T) float32 over T text tokens (empty unless requested). ``timestep``: the UNet step used.
    """

    self_attention: dict[Grid, torch.Tensor]
    cross_attention: dict[Grid, torch.Tensor]
    latent_hw: Grid
    timestep: int
    config: ExtractConfig = field(default_factory=ExtractConfig)

    def __len__(self) -> int:
        return next(iter(self.self_attention.values())).shape[0]

    def image(self, index: int) -> AttentionBundle:
        """The bundle of one image of the batch (views, B = 1)."""
        pick = slice(index, index + 1)
        return AttentionBundle(
            self_attention={g: a[pick] for g, a in self.self_attention.items()},
            cross_attention={g: a[pick] for g, a in self.cross_attention.items()},
            latent_hw=self.latent_hw,
            timestep=self.timestep,
            config=self.config,
        )


def inversion_timesteps(scheduler, num_inference_steps: int, steps: int) -> list[int]:
    """The first ``steps`` of the scheduler's ``num_inference_steps`` DDIM timesteps, ascending
    (SD v1, 10 of 50: 1, 21, …, 181)."""
    scheduler.set_timesteps(num_inference_steps)
    ascending = sorted(int(t) for t in scheduler.timesteps)
    return ascending[:steps]


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


class AttentionExtractor:
    """Runs ``ExtractConfig`` on a backbone: call with a (B, 3, h, w) batch in [-1, 1]."""

    def __init__(self, backbone: Backbone, config: ExtractConfig) -> None:
        self.backbone = backbone
        self.config = config
        self.condition = backbone.encode_prompt(config.prompt)  # (1, 77, D)
        scheduler = backbone.scheduler
        self.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
        if config.noise == "ddim_inversion":
            self.inversion = inversion_timesteps(scheduler, config.num_inference_steps, config.inversion_steps)
            self.timestep = self.inversion[-1]
        else:
            self.inversion = []
            self.timestep = DEFAULT_TIMESTEP if config.timestep is None else config.timestep

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, timer: StageTimer | None = None) -> AttentionBundle:
        timer = timer or StageTimer(images.device)
        with timer.stage("encode"):
            latents = self.encode(images)
        if self.config.noise != "none":
            with timer.stage("invert"):
                latents = self.add_noise(latents)
        latent_hw = tuple(latents.shape[-2:])
        with timer.stage("unet"), capture_attention(self.backbone.unet, self.config.capture_spec(), latent_hw) as store:
            self._unet(latents, self.timestep)
        return AttentionBundle(
            self_attention=store.means("self"),
            cross_attention=store.means("cross"),
            latent_hw=latent_hw,
            timestep=self.timestep,
            config=self.config,
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) in [-1, 1] → VAE posterior mean × scaling factor, (B, 4, h/8, w/8)."""
        backbone = self.backbone
        images = images.to(backbone.device, backbone.dtype)
        return backbone.vae.encode(images).latent_dist.mean * backbone.latent_scaling

    def add_noise(self, latents: torch.Tensor) -> torch.Tensor:
        """Apply the configured noise mode to clean latents."""
        if self.config.noise == "none":
            return latents
        if self.config.noise == "noise":
            generator = torch.Generator().manual_seed(self.config.seed)
            noise = torch.randn((1, *latents.shape[1:]), generator=generator).to(latents)
            alpha = float(self.alphas_cumprod[self.timestep])
            return math.sqrt(alpha) * latents + math.sqrt(1.0 - alpha) * noise.expand_as(latents)
        scheduler_config = self.backbone.scheduler.config
        start_alpha = 1.0 if scheduler_config.set_alpha_to_one else float(self.alphas_cumprod[0])
        return ddim_invert(latents, self._predict_noise, self.alphas_cumprod, self.inversion, start_alpha)

    def _unet(self, latents: torch.Tensor, timestep: int) -> torch.Tensor:
        condition = self.condition.expand(latents.shape[0], -1, -1)
        t = torch.tensor(timestep, device=latents.device)
        return self.backbone.unet(latents, t, encoder_hidden_states=condition).sample

    def _predict_noise(self, latents: torch.Tensor, timestep: int) -> torch.Tensor:
        """ε predicted at ``timestep``, converting v- or x₀-prediction models (SD 2.x) to ε."""
        output = self._unet(latents, timestep)
        kind = self.backbone.scheduler.config.prediction_type
        alpha = float(self.alphas_cumprod[timestep])
        if kind == "epsilon":
            return output
        if kind == "v_prediction":
            return math.sqrt(alpha) * output + math.sqrt(1.0 - alpha) * latents
        if kind == "sample":
            return (latents - math.sqrt(alpha) * output) / math.sqrt(1.0 - alpha)
        raise ValueError(f"unsupported prediction_type {kind!r}")
