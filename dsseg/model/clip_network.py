"""open_clip's ConvNeXt CLIP as plain torch modules, under open_clip's parameter names.

The network of ``convnext_large_d_320`` (timm's ConvNeXt trunk with its ``NormMlpClassifierHead``,
open_clip's ``TimmModel`` projection head and its text ``Transformer``), so an open_clip checkpoint
loads as is; ``dsseg.model.clip`` loads and runs it. transformers has no ConvNeXt CLIP, and open_clip's
needs timm and torchvision, which dsseg does not install.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LOGIT_SCALE_MAX = 100.0  # open_clip clamps exp(logit_scale) here; the released classifier too
NORM_EPS = 1e-6  # timm ConvNeXt's LayerNorm and LayerNorm2d
TEXT_NORM_EPS = 1e-5  # open_clip's text LayerNorm
# timm's ConvNeXt variants this module builds: (depths, dims) per stage.
CONVNEXT_TRUNKS = {
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
}


@dataclass(frozen=True)
class ClipArchitecture:
    """What a ConvNeXt CLIP is made of: the trunk's ``depths`` and ``dims`` per stage, the
    projection head (``proj``: ``mlp`` or ``linear``; ``proj_bias``), the joint ``embed_dim``, and
    the text transformer (``text_width``, ``text_heads``, ``text_layers``, ``context_length``,
    ``vocab_size``; ``quick_gelu`` for models trained with it)."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    embed_dim: int
    proj: str = "mlp"
    proj_bias: bool = False
    text_width: int = 768
    text_heads: int = 12
    text_layers: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    quick_gelu: bool = False

    @classmethod
    def from_open_clip(cls, config: Mapping) -> ClipArchitecture:
        """An open_clip model config (``model_cfg`` of ``open_clip_config.json``) → the architecture;
        a ``ValueError`` for towers this module does not build."""
        vision, text = dict(config.get("vision_cfg", {})), dict(config.get("text_cfg", {}))
        trunk = vision.get("timm_model_name")
        if trunk not in CONVNEXT_TRUNKS:
            raise ValueError(
                f"naming with CLIP reads an open_clip ConvNeXt CLIP (timm_model_name one of {sorted(CONVNEXT_TRUNKS)}); "
                f"this one's vision tower is {trunk or vision!r}"
            )
        if vision.get("timm_pool", "") not in ("", "avg") or vision.get("timm_proj", "linear") not in ("mlp", "linear"):
            raise ValueError(
                f"unsupported ConvNeXt CLIP head: timm_pool {vision.get('timm_pool')!r}, timm_proj {vision.get('timm_proj')!r}"
            )
        if text.get("hf_model_name") or text.get("ls_init_value") is not None:
            raise ValueError(
                "naming with CLIP reads open_clip's own text transformer (no hf_model_name, no layer scale)"
            )
        depths, dims = CONVNEXT_TRUNKS[trunk]
        return cls(
            depths=depths,
            dims=dims,
            embed_dim=int(config["embed_dim"]),
            proj=vision.get("timm_proj", "linear"),
            proj_bias=bool(vision.get("timm_proj_bias", False)),
            text_width=int(text.get("width", 512)),
            text_heads=int(text.get("heads", 8)),
            text_layers=int(text.get("layers", 12)),
            context_length=int(text.get("context_length", 77)),
            vocab_size=int(text.get("vocab_size", 49408)),
            quick_gelu=bool(config.get("quick_gelu", False)),
        )


TINY_CLIP = ClipArchitecture(
    depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), embed_dim=16, text_width=16, text_heads=2, text_layers=1
)


def causal_mask(length: int) -> torch.Tensor:
    """(L, L) additive attention mask: −inf above the diagonal (open_clip's ``build_causal_mask``)."""
    return torch.full((length, length), float("-inf")).triu_(1)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, H, W) maps (timm's ``LayerNorm2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    """timm's ``Mlp``: fc1, GELU, fc2 (dropout 0)."""

    def __init__(self, width: int, hidden: int, out: int, bias: tuple[bool, bool] = (True, True)) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden, bias=bias[0])
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out, bias=bias[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """timm's ``ConvNeXtBlock`` (``conv_mlp=False``, layer scale ``gamma``): depthwise 7×7 conv,
    channels-last LayerNorm and MLP (×4), scaled, plus the input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp = Mlp(dim, 4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x.mul(self.gamma.reshape(1, -1, 1, 1)) + shortcut


class ConvNeXtStage(nn.Module):
    """timm's ``ConvNeXtStage``: a LayerNorm2d + 2×2 stride-2 conv downsampling (not in the first), then blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int) -> None:
        super().__init__()
        if in_dim == dim:
            self.downsample = nn.Identity()
        else:
            self.downsample = nn.Sequential(LayerNorm2d(in_dim, eps=NORM_EPS), nn.Conv2d(in_dim, dim, 2, stride=2))
        self.blocks = nn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class NormHead(nn.Module):
    """timm's ``NormMlpClassifierHead`` as open_clip leaves it (no classes): global average pool,
    LayerNorm2d, flatten."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.mean(dim=(2, 3), keepdim=True)).flatten(1)


class ConvNeXtTrunk(nn.Module):
    """timm's ``ConvNeXt`` (patch stem 4×4, four stages, ``norm_pre`` identity, head)."""

    def __init__(self, depths: Sequence[int], dims: Sequence[int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=NORM_EPS))
        self.stages = nn.Sequential(
            *(ConvNeXtStage(dims[max(i - 1, 0)], dims[i], depth) for i, depth in enumerate(depths))
        )
        self.head = NormHead(dims[-1])

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, C, H/32, W/32): the stem and the stages (``norm_pre`` is the identity)."""
        return self.stages(self.stem(x))


class VisualTower(nn.Module):
    """open_clip's ``TimmModel`` around a ConvNeXt trunk: ``trunk`` and the projection ``head``."""

    def __init__(self, arch: ClipArchitecture) -> None:
        super().__init__()
        self.trunk = ConvNeXtTrunk(arch.depths, arch.dims)
        width, layers = arch.dims[-1], OrderedDict()
        if arch.proj == "mlp":
            layers["mlp"] = Mlp(width, 2 * arch.embed_dim, arch.embed_dim, bias=(True, arch.proj_bias))
        else:
            layers["drop"] = nn.Dropout(0.0)
            layers["proj"] = nn.Linear(width, arch.embed_dim, bias=arch.proj_bias)
        self.head = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk.head(self.trunk.dense(x)))


class ResidualAttentionBlock(nn.Module):
    """open_clip's text ``ResidualAttentionBlock`` (pre-LayerNorm, no layer scale)."""

    def __init__(self, width: int, heads: int, quick_gelu: bool = False) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=TEXT_NORM_EPS)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width, eps=TEXT_NORM_EPS)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, 4 * width),
                gelu=QuickGELU() if quick_gelu else nn.GELU(),
                c_proj=nn.Linear(4 * width, width),
            )
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    def __init__(self, arch: ClipArchitecture) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(arch.text_width, arch.text_heads, arch.quick_gelu) for _ in range(arch.text_layers)
        )


class ClipModel(nn.Module):
    """open_clip's ``CLIP`` with a ConvNeXt vision tower: ``visual`` and the text tower's
    ``token_embedding``, ``positional_embedding``, ``transformer``, ``ln_final``,
    ``text_projection``; ``logit_scale``. Parameter names are open_clip's."""

    def __init__(self, arch: ClipArchitecture) -> None:
        super().__init__()
        self.arch = arch
        self.visual = VisualTower(arch)
        self.token_embedding = nn.Embedding(arch.vocab_size, arch.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(arch.context_length, arch.text_width))
        self.transformer = TextTransformer(arch)
        self.ln_final = nn.LayerNorm(arch.text_width, eps=TEXT_NORM_EPS)
        self.text_projection = nn.Parameter(torch.empty(arch.text_width, arch.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("attn_mask", causal_mask(arch.context_length), persistent=False)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, 77) token ids → (N, embed_dim), not normalised: the end token's state (the largest id
        of each row) after ``ln_final``, times ``text_projection`` (the released ``encode_text``)."""
        x = self.token_embedding(ids) + self.positional_embedding
        mask = self.attn_mask.to(x.dtype)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)] @ self.text_projection

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, C, H/32, W/32): the trunk's stem and stages (the released
        ``extract_features_convnext``'s ``clip_vis_dense``)."""
        return self.visual.trunk.dense(images)

    def embed_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, C) pooled trunk features → (N, embed_dim): each as a 1×1 map through the trunk's head
        and the projection (the released ``visual_prediction_forward_convnext``)."""
        return self.visual.head(self.visual.trunk.head(pooled[:, :, None, None]))

    @property
    def temperature(self) -> float:
        """exp(logit_scale), clamped at 100 as open_clip and the released classifier do."""
        return min(float(self.logit_scale.exp()), LOGIT_SCALE_MAX)
