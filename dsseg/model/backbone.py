"""Stable Diffusion backbones: real weights from the hub or a folder, and in-process random ones.

``load_backbone(name)`` accepts
- ``"tiny"``: SD v1's classes and layer layout (16 self-attention layers: 64²×5, 32²×5,
  16²×5, 8²×1 for a 512² input) with small widths and seeded random weights, built in a
  second or two; the real CLIP tokenizer. For tests and smoke runs.
- ``"sd-v1-random"``: the full-size SD v1 architecture with seeded random weights: the same
  FLOPs and memory as the real model, for speed measurements without weights.
- ``"tiny-sdxl"`` and ``"sdxl-random"``: the same for SDXL's layout (three UNet levels, attention
  at 1/2 and 1/4 of the latent, several transformer layers per block, two text encoders, pooled
  text embeddings and size conditioning).
- a hub id (default ``CompVis/stable-diffusion-v1-4``) or a local folder in diffusers layout
  (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``), any SD v1.x or v2.x, or SDXL-class
  (``text_encoder_2/ tokenizer_2/`` too: SDXL base, SSD-1B).

SDXL conditioning: the prompt's states are the penultimate hidden states of both text encoders
side by side (77 × 2048 for SDXL), the pooled embedding comes from the second encoder's
projection, and the size ids are (H, W, 0, 0, H, W) of the model input. ``encode_prompt`` packs the
pooled embedding as one extra row after the 77 token rows (zero-padded to the state width), so a
condition is one tensor that prompts can be concatenated and re-weighted in; ``run_unet`` unpacks it.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from dsseg.errors import ConfigError, WeightsNotFoundError
from dsseg.model.config import DEFAULT_BACKBONE
from dsseg.model.families import RANDOM_BACKBONES, RANDOM_MMDITS, backbone_family
from dsseg.model.hub import is_local, weights_problem
from dsseg.model.mmdit import MMDiTBackbone, build_random_mmdit, load_pretrained_mmdit, mmdit_weights_problem
from dsseg.model.precision import announce, auto_dtype
from dsseg.model.tokenizer import CONTEXT_LENGTH, clip_tokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# SD v1 noise schedule (scheduler/scheduler_config.json of the v1.x checkpoints).
SD_V1_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)
_CROSS_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
_CROSS_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3

# Architectures: SD v1 at full size, and the same layout at small widths.
_ARCHITECTURES = {
    "sd-v1-random": dict(
        unet=dict(
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32
        ),
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
        text=dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768
        ),
        qk_gain=1.0,
    ),
    "tiny": dict(
        unet=dict(block_out_channels=(32, 64, 64, 64), cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8),
        vae=dict(block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=8),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32),
        # Random projections give near-uniform attention; sharpening the query/key weights makes
        # the tiny model's attention follow local colour and texture, so smoke runs segment something.
        qk_gain=5.0,
    ),
    # SDXL base: three levels (no attention at the first), transformer depths 1, 2, 10, CLIP-L + bigG.
    "sdxl-random": dict(
        unet=dict(
            block_out_channels=(320, 640, 1280),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            addition_time_embed_dim=256,
            norm_num_groups=32,
        ),
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
        text=dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768
        ),
        text_2=dict(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, projection_dim=1280
        ),
        qk_gain=1.0,
    ),
    "tiny-sdxl": dict(
        unet=dict(
            block_out_channels=(32, 64, 64),
            transformer_layers_per_block=(1, 2, 2),
            attention_head_dim=(2, 4, 4),
            addition_time_embed_dim=8,
            norm_num_groups=8,
        ),
        vae=dict(block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=8),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32),
        text_2=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32
        ),
        qk_gain=5.0,
    ),
}
_XL_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
_XL_UP = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")


class BackboneNotFoundError(WeightsNotFoundError):
    """Stable Diffusion weights could not be loaded; the message says how to provide them."""


@dataclass
class Backbone:
    """The frozen parts of a Stable Diffusion pipeline that dsseg runs, on one device."""

    name: str
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    device: torch.device
    dtype: torch.dtype
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL-class only
    tokenizer_2: CLIPTokenizer | None = None
    _prompt_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    family = "unet"
    latent_shift = 0.0  # subtracted from the VAE posterior before scaling (SD3's VAE has one)

    @property
    def denoiser(self) -> UNet2DConditionModel:
        """The network one step runs (the UNet; ``MMDiTBackbone.denoiser`` is its transformer)."""
        return self.unet

    def modules_to_place(self) -> list[tuple[torch.nn.Module, bool]]:
        """(module, keep float32) for every model part to move to the device and dtype: SDXL's VAE
        overflows in float16 (its config says force_upcast) and stays float32."""
        upcast = self.is_xl and getattr(self.vae.config, "force_upcast", False)
        parts = [(self.vae, upcast), (self.unet, False), (self.text_encoder, False), (self.text_encoder_2, False)]
        return [(module, keep) for module, keep in parts if module is not None]

    @property
    def is_xl(self) -> bool:
        """Whether this is an SDXL-class backbone (two text encoders, pooled and size conditioning)."""
        return self.text_encoder_2 is not None

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each axis (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scaling(self) -> float:
        """Multiplier applied to the VAE posterior mean (0.18215 for SD v1/v2)."""
        return float(self.vae.config.scaling_factor)

    @torch.no_grad()
    def encode_prompt(self, prompt: str, cache: bool = True) -> torch.Tensor:
        """The UNet's conditioning for one prompt, in the model dtype: (1, 77, D) text-encoder states,
        or for SDXL (1, 78, D) with the pooled embedding packed as row 77 (see the module
        docstring). Kept for reuse unless ``cache`` is False (callers with many prompts keep their own)."""
        if prompt in self._prompt_cache:
            return self._prompt_cache[prompt]
        ids = self._token_ids(self.tokenizer, prompt)
        if not self.is_xl:
            states = self.text_encoder(ids)[0].to(self.dtype)
        else:
            first = self.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
            second = self.text_encoder_2(self._token_ids(self.tokenizer_2, prompt), output_hidden_states=True)
            states = torch.cat([first, second.hidden_states[-2]], dim=-1)
            pooled = torch.nn.functional.pad(second.text_embeds, (0, states.shape[-1] - second.text_embeds.shape[-1]))
            states = torch.cat([states, pooled[:, None]], dim=1).to(self.dtype)
        if cache:
            self._prompt_cache[prompt] = states
        return states

    def _token_ids(self, tokenizer: CLIPTokenizer, prompt: str) -> torch.Tensor:
        return tokenizer(
            prompt, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)

    def denoise(self, latents: torch.Tensor, timestep: int | torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """One network call, the name both families share (``run_unet``)."""
        return self.run_unet(latents, timestep, condition)

    def run_unet(self, latents: torch.Tensor, timestep: int | torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """One UNet call: latents (B, 4, h, w) at ``timestep`` (one, or (B,) per latent) with
        conditions (B, 77, D) from ``encode_prompt`` (SDXL: (B, 78, D), unpacked here) → its output."""
        t = torch.as_tensor(timestep, device=latents.device)
        if not self.is_xl:
            return self.unet(latents, t, encoder_hidden_states=condition).sample
        pooled = condition[:, CONTEXT_LENGTH, : self.text_encoder_2.config.projection_dim]
        height, width = (side * self.vae_scale_factor for side in latents.shape[-2:])
        size_ids = torch.tensor([height, width, 0, 0, height, width], device=latents.device, dtype=condition.dtype)
        extra = {"text_embeds": pooled, "time_ids": size_ids.expand(latents.shape[0], -1)}
        return self.unet(
            latents, t, encoder_hidden_states=condition[:, :CONTEXT_LENGTH], added_cond_kwargs=extra
        ).sample


AnyBackbone = Backbone | MMDiTBackbone  # what load_backbone returns: a UNet or an MM-DiT pipeline's parts


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` → CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA is not available on this machine (torch sees no GPU); use --device cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, methods: Collection[str] = ()) -> torch.dtype:
    """``None``/``"auto"`` → ``dsseg.model.precision.auto_dtype`` for ``device`` and the run's
    ``methods`` (empty: any method), announced in one line on stderr; a name → its torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        name, why = auto_dtype(device.type, methods)
        announce(name, why, device.type)
        return DTYPES[name]
    if dtype not in DTYPES:
        raise ConfigError("dtype", f"must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    offline: bool = False,
    seed: int = 0,
    compile: bool = False,
    methods: Collection[str] = (),
) -> AnyBackbone:
    """Load a backbone by name (see module docstring and ``dsseg.model.mmdit``); frozen, in eval mode,
    on ``device``. ``methods``: those the backbone will run, which ``dtype="auto"`` considers
    (``resolve_dtype``).

    ``offline=True`` never contacts the hub (weights must be in a local folder or the HF cache).
    ``seed`` only affects the random backbones. ``compile``: see ``compile_backbone``.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device, methods)
    family = backbone_family(name)
    if name in RANDOM_MMDITS:
        parts = build_random_mmdit(name, seed)
    elif name in RANDOM_BACKBONES:
        parts = _build_random(name, seed)
    else:
        parts = _load_pretrained(name, dtype, offline, family)
    kind = MMDiTBackbone if family == "mmdit" else Backbone
    backbone = kind(name=name, device=device, dtype=dtype, **parts)
    for module, keep_float32 in backbone.modules_to_place():
        # nn.Module.to, not diffusers' override: that one warns on every dtype cast (diffusers 0.42).
        torch.nn.Module.to(module, device=device, dtype=torch.float32 if keep_float32 else dtype)
        module.eval().requires_grad_(False)
    if compile:
        compile_backbone(backbone)
    return backbone


COMPILED_SHAPES = 4  # input shapes (batch size × resolution) compiled per block before falling back to eager


def compile_backbone(backbone: Backbone) -> int:
    """``torch.compile`` in place the VAE encoder and the UNet's ResNet and feed-forward blocks
    (most of the UNet's FLOPs outside attention); attention layers stay eager, as the capture
    swaps their processors per call. The first call at each input shape compiles (minutes);
    returns how many modules were wrapped."""
    import torch._dynamo.config
    from diffusers.models.attention import FeedForward
    from diffusers.models.resnet import ResnetBlock2D

    modules = [
        backbone.vae.encoder,
        *(m for m in backbone.denoiser.modules() if isinstance(m, (ResnetBlock2D, FeedForward))),
    ]
    # Blocks of one class share their forward's code, compiled once per instance and input shape:
    # past the default limit (8) the rest would silently run eager.
    limit = COMPILED_SHAPES * len(modules)
    config = torch._dynamo.config
    for names in (
        ("recompile_limit", "cache_size_limit"),
        ("accumulated_recompile_limit", "accumulated_cache_size_limit"),
    ):
        name = next(n for n in names if hasattr(config, n))  # renamed in torch 2.7
        setattr(config, name, max(getattr(config, name), limit))
    for module in modules:
        module.compile()
    return len(modules)


def cached_backbone(
    name: str,
    device: str | None = None,
    dtype: str | None = None,
    offline: bool = False,
    methods: tuple[str, ...] = (),
) -> AnyBackbone:
    """``load_backbone`` memoised per (name, device, resolved dtype, offline), for interactive use;
    ``methods`` count only for what ``dtype="auto"`` resolves to."""
    resolved = resolve_device(device)
    precision = str(resolve_dtype(dtype, resolved, methods)).removeprefix("torch.")
    return _cached_backbone(name, str(resolved), precision, offline)


@functools.lru_cache(maxsize=2)
def _cached_backbone(name: str, device: str, dtype: str, offline: bool) -> AnyBackbone:
    return load_backbone(name, device=device, dtype=dtype, offline=offline)


def _build_random(name: str, seed: int) -> dict:
    arch = _ARCHITECTURES[name]
    xl = "text_2" in arch
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if xl:
            text_dims = arch["text"]["hidden_size"] + arch["text_2"]["hidden_size"]
            unet = UNet2DConditionModel(
                sample_size=128, layers_per_block=2, down_block_types=_XL_DOWN, up_block_types=_XL_UP,
                cross_attention_dim=text_dims, use_linear_projection=True, addition_embed_type="text_time",
                projection_class_embeddings_input_dim=arch["text_2"]["projection_dim"] + 6 * arch["unet"]["addition_time_embed_dim"],
                **arch["unet"],
            )  # fmt: skip
        else:
            unet = UNet2DConditionModel(
                sample_size=64,
                layers_per_block=2,
                down_block_types=_CROSS_DOWN,
                up_block_types=_CROSS_UP,
                **arch["unet"],
            )
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            sample_size=1024 if xl else 512,
            scaling_factor=0.13025 if xl else 0.18215,
            **arch["vae"],
        )
        text_config = dict(vocab_size=49408, max_position_embeddings=CONTEXT_LENGTH, hidden_act="quick_gelu")
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config, **arch["text"]))
        second = (
            {
                "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**text_config, **arch["text_2"])),
                "tokenizer_2": clip_tokenizer(),
            }
            if xl
            else {}
        )
        if arch["qk_gain"] != 1.0:
            _sharpen_attention(unet, arch["qk_gain"])
    return dict(
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        scheduler=DDIMScheduler(**SD_V1_SCHEDULER),
        **second,
    )


@torch.no_grad()
def _sharpen_attention(unet: UNet2DConditionModel, gain: float) -> None:
    """Scale every query and key projection by ``gain`` (logits scale by gain²)."""
    for name, module in unet.named_modules():
        if name.endswith(("attn1", "attn2")):
            module.to_q.weight.mul_(gain)
            module.to_k.weight.mul_(gain)


def check_backbone_available(name: str, offline: bool = False) -> None:
    """Fail fast, before any worker starts, when weights certainly cannot be loaded: a local
    folder without ``unet/`` (SD3: ``transformer/``), or a hub id absent from the cache when offline
    or unreachable."""
    if name in RANDOM_BACKBONES:
        return
    if backbone_family(name) == "mmdit":
        problem = mmdit_weights_problem(name, offline)
    else:
        problem = weights_problem(name, "unet/config.json", offline)
    if problem:
        raise BackboneNotFoundError(_missing_weights_message(name, problem))


def _load_pretrained(source: str, dtype: torch.dtype, offline: bool, family: str = "unet") -> dict:
    check_backbone_available(source, offline)
    try:
        if family == "mmdit":
            return load_pretrained_mmdit(source, dtype, offline)
        return _load_pretrained_unet(source, dtype, offline)
    except (OSError, ValueError) as error:  # hub errors and missing files are OSError subclasses
        raise BackboneNotFoundError(_missing_weights_message(source, f"{type(error).__name__}: {error}")) from error


def _load_pretrained_unet(source: str, dtype: torch.dtype, offline: bool) -> dict:
    source = str(Path(source).expanduser()) if is_local(source) else source
    common = dict(local_files_only=offline)
    parts = dict(
        tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common),
        text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **common),
        vae=AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **common),
        unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **common),
        # SDXL ships an Euler scheduler: its noise schedule (betas) is what DDIM takes from it.
        scheduler=DDIMScheduler.from_pretrained(source, subfolder="scheduler", **common),
    )
    if parts["unet"].config.addition_embed_type == "text_time":  # SDXL-class: the second text encoder
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **common)
        parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
            source, subfolder="text_encoder_2", dtype=dtype, **common
        )
    return parts


def _missing_weights_message(source: str, reason: str) -> str:
    return (
        f"Could not load Stable Diffusion weights from {source!r} ({reason.splitlines()[0]}).\n"
        "dsseg needs a diffusers-format SD v1.x/v2.x pipeline (folders unet/, vae/, text_encoder/, "
        "tokenizer/, scheduler/), an SDXL-class one (also text_encoder_2/, tokenizer_2/: SDXL base, SSD-1B), "
        "or an SD3 / SD3.5 one (transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, "
        "scheduler/; text_encoder_3/ and tokenizer_3/ (T5) are used when present). To provide one:\n"
        f"  1. on a machine with internet access: huggingface-cli download {DEFAULT_BACKBONE} "
        "--local-dir /models/sd-v1-4 (accept the licence on huggingface.co first; set HF_TOKEN),\n"
        "     then pass --backbone /models/sd-v1-4 (a local folder), or\n"
        "  2. keep a hub id and point HF_HOME at a cache that holds it; add --offline on machines without internet.\n"
        "For a smoke test without weights use --backbone tiny, tiny-sdxl or tiny-sd3 (random weights, same layouts)."
    )
