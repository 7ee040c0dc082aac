"""Stable Diffusion 3 / 3.5 (MM-DiT) backbones: real weights from the hub or a folder, and random ones.

- ``"tiny-sd3"``: SD3's classes and layout (``SD3Transformer2DModel`` with 12 joint blocks, a 16-channel
  VAE, CLIP-L and CLIP-G text encoders, flow-matching scheduler) at small widths with seeded random
  weights, built in about a second; the real CLIP tokenizer, no T5. For tests and smoke runs.
- ``"sd3-random"``: SD3-medium's full-size transformer, VAE and CLIP encoders with seeded random
  weights (no T5: a random T5-XXL would add 19 GB and no attention FLOPs that differ), for speed.
- a hub id (``stabilityai/stable-diffusion-3-medium-diffusers``, SD3.5) or a local diffusers folder
  (``transformer/ vae/ text_encoder/ text_encoder_2/ tokenizer/ tokenizer_2/ scheduler/``, and
  ``text_encoder_3/ tokenizer_3/`` (T5) when present).

Conditioning as diffusers' ``StableDiffusion3Pipeline``: the penultimate hidden states of both CLIP
encoders side by side (77 × 2048 for SD3), zero-padded to the transformer's joint width (4096), then
``T5_TOKENS`` rows of T5 states (zeros without T5, as diffusers does): 154 text tokens, 77 CLIP + 77
T5, Seg4Diff's NUM_TOKENS. The pooled projection is both encoders' projected embeddings side by side
(2048). ``encode_prompt`` packs it as one extra row after the text rows (zero-padded), so a condition
is one tensor, as for SDXL; ``denoise`` unpacks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

from dsseg.model.hub import is_local, weights_problem
from dsseg.model.tokenizer import CONTEXT_LENGTH, clip_tokenizer

T5_TOKENS = 77  # T5 rows of the condition (Seg4Diff: 77 CLIP + 77 T5 = 154 text tokens)
DEFAULT_MMDIT = "stabilityai/stable-diffusion-3-medium-diffusers"
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)  # scheduler/scheduler_config.json of SD3-medium
SD3_VAE = dict(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)  # fmt: skip

_CLIP_L = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768
)
_CLIP_G = dict(
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, projection_dim=1280
)
_TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32)
_ARCHITECTURES = {
    # stabilityai/stable-diffusion-3-medium-diffusers transformer/config.json
    "sd3-random": dict(
        transformer=dict(
            num_layers=24, attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
            caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192,
        ),
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
        text=_CLIP_L, text_2=_CLIP_G, qk_gain=1.0,
    ),
    "tiny-sd3": dict(
        transformer=dict(
            num_layers=12, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
            caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=96,
        ),
        vae=dict(block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=8),
        # Random projections give near-uniform attention; sharper query/key weights make the tiny
        # model's attention follow colour and texture (as for the tiny UNet).
        text=_TINY_CLIP, text_2=_TINY_CLIP, qk_gain=5.0,
    ),
}  # fmt: skip


@dataclass
class MMDiTBackbone:
    """The frozen parts of a Stable Diffusion 3 pipeline that dsseg runs, on one device."""

    name: str
    vae: AutoencoderKL
    transformer: SD3Transformer2DModel
    text_encoder: CLIPTextModelWithProjection
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    scheduler: FlowMatchEulerDiscreteScheduler
    device: torch.device
    dtype: torch.dtype
    text_encoder_3: torch.nn.Module | None = None  # T5 encoder, optional
    tokenizer_3: object | None = None
    _prompt_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    family = "mmdit"
    is_xl = False

    @property
    def denoiser(self) -> SD3Transformer2DModel:
        return self.transformer

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each axis (8)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def patch_size(self) -> int:
        """Latent cells per token along each axis (2): the token grid is the latent over this."""
        return int(self.transformer.config.patch_size)

    @property
    def latent_scaling(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_shift(self) -> float:
        """Subtracted from the VAE posterior before scaling (SD3: 0.0609)."""
        return float(self.vae.config.shift_factor or 0.0)

    @property
    def text_tokens(self) -> int:
        """Text tokens of a condition (154: 77 CLIP + 77 T5)."""
        return CONTEXT_LENGTH + T5_TOKENS

    @torch.no_grad()
    def encode_prompt(self, prompt: str, cache: bool = True) -> torch.Tensor:
        """The transformer's conditioning for one prompt, in the model dtype: (1, 155, D) — 77 CLIP
        rows, 77 T5 rows, then the pooled projection packed as the last row (see the module docstring)."""
        if prompt in self._prompt_cache:
            return self._prompt_cache[prompt]
        width = self.transformer.config.joint_attention_dim
        states, pooled = [], []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(
                prompt, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            output = encoder(ids, output_hidden_states=True)
            states.append(output.hidden_states[-2])
            pooled.append(output.text_embeds)
        clip = torch.nn.functional.pad(torch.cat(states, dim=-1), (0, width - sum(s.shape[-1] for s in states)))
        t5 = self._t5_states(prompt, width).to(clip)
        pooled_row = torch.cat(pooled, dim=-1)
        pooled_row = torch.nn.functional.pad(pooled_row, (0, width - pooled_row.shape[-1]))
        condition = torch.cat([clip, t5, pooled_row[:, None]], dim=1).to(self.dtype)
        if cache:
            self._prompt_cache[prompt] = condition
        return condition

    def _t5_states(self, prompt: str, width: int) -> torch.Tensor:
        """(1, T5_TOKENS, width) T5 states of ``prompt``; zeros without a T5 encoder (as diffusers)."""
        if self.text_encoder_3 is None:
            return torch.zeros(1, T5_TOKENS, width, device=self.device)
        ids = self.tokenizer_3(
            prompt, padding="max_length", max_length=T5_TOKENS, truncation=True, add_special_tokens=True,
            return_tensors="pt",
        ).input_ids.to(self.device)  # fmt: skip
        return self.text_encoder_3(ids)[0]

    def denoise(self, latents: torch.Tensor, timestep: float | torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """One transformer call: latents (B, 16, h, w) at ``timestep`` (σ·1000, one or (B,)) with
        conditions (B, 155, D) from ``encode_prompt`` → the predicted velocity, same shape as latents."""
        t = torch.as_tensor(timestep, device=latents.device, dtype=latents.dtype).expand(latents.shape[0])
        pooled = condition[:, -1, : self.transformer.config.pooled_projection_dim]
        return self.transformer(
            hidden_states=latents, encoder_hidden_states=condition[:, :-1], pooled_projections=pooled, timestep=t
        ).sample

    def modules_to_place(self) -> list[tuple[torch.nn.Module, bool]]:
        """(module, keep float32) for every model part to move to the device and dtype."""
        parts = [self.vae, self.transformer, self.text_encoder, self.text_encoder_2, self.text_encoder_3]
        return [(module, False) for module in parts if module is not None]


def build_random_mmdit(name: str, seed: int) -> dict:
    """The parts of ``tiny-sd3`` or ``sd3-random`` with seeded random weights."""
    arch = _ARCHITECTURES[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, out_channels=16, **arch["transformer"])  # fmt: skip
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=1024, **SD3_VAE, **arch["vae"],
        )  # fmt: skip
        text = dict(vocab_size=49408, max_position_embeddings=CONTEXT_LENGTH, hidden_act="quick_gelu")
        encoders = [CLIPTextModelWithProjection(CLIPTextConfig(**text, **arch[key])) for key in ("text", "text_2")]
        if arch["qk_gain"] != 1.0:
            sharpen_joint_attention(transformer, arch["qk_gain"])
    return dict(
        vae=vae, transformer=transformer, text_encoder=encoders[0], text_encoder_2=encoders[1],
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
    )  # fmt: skip


@torch.no_grad()
def sharpen_joint_attention(transformer: SD3Transformer2DModel, gain: float) -> None:
    """Scale every query and key projection (image and text streams) by ``gain`` (logits by gain²)."""
    for block in transformer.transformer_blocks:
        attn = block.attn
        for projection in (attn.to_q, attn.to_k, attn.add_q_proj, attn.add_k_proj):
            if projection is not None:
                projection.weight.mul_(gain)


def mmdit_weights_problem(source: str, offline: bool) -> str | None:
    """Why an SD3 pipeline certainly cannot be loaded from ``source``, or None."""
    return weights_problem(source, "transformer/config.json", offline)


def load_pretrained_mmdit(source: str, dtype: torch.dtype, offline: bool) -> dict:
    """The parts of an SD3 / SD3.5 diffusers pipeline (T5 when the pipeline has it); ``OSError`` or
    ``ValueError`` when they cannot be loaded (the caller words the message)."""
    source = str(Path(source).expanduser()) if is_local(source) else source
    common = dict(local_files_only=offline)
    parts = dict(
        tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common),
        tokenizer_2=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **common),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **common),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", dtype=dtype, **common),
        vae=AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **common),
        transformer=SD3Transformer2DModel.from_pretrained(source, subfolder="transformer", torch_dtype=dtype, **common),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler", **common),
    )  # fmt: skip
    if weights_problem(source, "text_encoder_3/config.json", offline=True) is None:
        from transformers import T5EncoderModel, T5TokenizerFast

        parts["tokenizer_3"] = T5TokenizerFast.from_pretrained(source, subfolder="tokenizer_3", **common)
        parts["text_encoder_3"] = T5EncoderModel.from_pretrained(source, subfolder="text_encoder_3", dtype=dtype, **common)  # fmt: skip
    return parts
