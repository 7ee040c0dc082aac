"""The CLIP model that names segments (``naming="clip"``): open_clip's ConvNeXt CLIP in plain torch.

DiffCut's released open-vocabulary evaluation (``eval_diffcut_openvoc.py``, ``tools/clip_classifier.py``)
names masks with open_clip's ``convnext_large_d_320`` CLIP (pretrained ``laion2b_s29b_b131k_ft_soup``,
on the hub as ``laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup``). It reads the ConvNeXt
trunk's dense features (stem, four stages, ``norm_pre``), pools them under a mask, and passes the
pooled vector through the trunk's head (its LayerNorm) and the CLIP projection (an MLP). transformers
has no ConvNeXt CLIP, and open_clip's needs timm and torchvision, which dsseg does not install; this
module is the same network (timm's ConvNeXt with its ``NormMlpClassifierHead``, open_clip's ``TimmModel``
head and text ``Transformer``) with open_clip's parameter names, so an open_clip checkpoint loads as
is (strictly: every name and shape must match).

``load_clip(name)`` accepts
- a hub id (default ``DEFAULT_CLIP_MODEL``) or a local folder holding ``open_clip_config.json`` and
  ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin`` (the files open_clip's hub
  repositories hold);
- ``"tiny-clip"``: the same architecture at small widths with seeded random weights and the real
  CLIP tokenizer, for tests and smoke runs.

Text is tokenized with the OpenAI CLIP BPE (``dsseg.model.tokenizer``; open_clip's ``SimpleTokenizer``
reads the same vocabulary file): start and end tokens, at most 77 tokens (the last one the end token
when cut), padded with 0.
"""

from __future__ import annotations

import functools
import json
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from torch import nn

from dsseg.errors import WeightsNotFoundError
from dsseg.model.backbone import resolve_device
from dsseg.model.hub import is_local, weights_problem
from dsseg.spec import DEFAULT_CLIP_MODEL

RANDOM_CLIPS = ("tiny-clip",)
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
LOGIT_SCALE_MAX = 100.0  # open_clip clamps exp(logit_scale) here; the released classifier too
NORM_EPS = 1e-6  # timm ConvNeXt's LayerNorm and LayerNorm2d
TEXT_NORM_EPS = 1e-5  # open_clip's text LayerNorm
# timm's ConvNeXt variants this module builds: (depths, dims) per stage.
CONVNEXT_TRUNKS = {
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
}
# The architecture of open_clip's convnext_large_d_320 (its model_configs/convnext_large_d_320.json),
# used when a folder or hub id holds weights without open_clip_config.json.
CONVNEXT_LARGE_D_320 = {
    "embed_dim": 768,
    "vision_cfg": {"timm_model_name": "convnext_large", "timm_pool": "", "timm_proj": "mlp", "image_size": 320},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 16},
}


class ClipNotFoundError(WeightsNotFoundError):
    """CLIP weights could not be loaded; the message says how to provide them."""


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


class Clip:
    """A ``ClipModel`` on one device (frozen, eval mode) and its tokenizer."""

    def __init__(self, name: str, model: ClipModel) -> None:
        from dsseg.model.tokenizer import clip_tokenizer

        self.name, self.model, self.tokenizer = name, model, clip_tokenizer()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def token_ids(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts → (N, context_length) int64 ids as open_clip's tokenizer makes them: start token,
        BPE, end token; cut to the context (the last id then the end token) and padded with 0."""
        length = self.model.arch.context_length
        out = torch.zeros(len(texts), length, dtype=torch.long)
        end = self.tokenizer.eos_token_id
        for row, ids in enumerate(self.tokenizer(list(texts)).input_ids):
            if len(ids) > length:
                ids = [*ids[: length - 1], end]
            out[row, : len(ids)] = torch.tensor(ids)
        return out.to(self.device)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """(N, embed_dim) float32 text features, not normalised, ``batch_size`` texts per call (the released 128)."""
        parts = [
            self.model.encode_text(self.token_ids(texts[start : start + batch_size])).float()
            for start in range(0, len(texts), batch_size)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, self.model.arch.embed_dim, device=self.device)


def load_clip(
    name: str = DEFAULT_CLIP_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "float32",
    offline: bool = False,
    seed: int = 0,
) -> Clip:
    """Load a CLIP by name (see the module docstring) on ``device`` (default: CUDA when available)
    in ``dtype`` (default float32, as the released evaluation runs it); ``offline`` never contacts the hub."""
    from dsseg.model.backbone import resolve_dtype

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    model = build_random_clip(name, seed) if name in RANDOM_CLIPS else _load_pretrained(name, offline)
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return Clip(name, model)


@functools.lru_cache(maxsize=2)
def cached_clip(name: str, device: str | None = None, dtype: str | None = "float32", offline: bool = False) -> Clip:
    """``load_clip`` memoised per (name, device, dtype, offline)."""
    return load_clip(name, device=device, dtype=dtype, offline=offline)


def build_random_clip(name: str = "tiny-clip", seed: int = 0) -> ClipModel:
    """``tiny-clip``: ``TINY_CLIP`` with seeded random weights, drawn in parameter order from one
    generator (the same seed gives the same model on any machine): normal, std 1/√fan-in for
    matrices and kernels, 1 for token embeddings, 0.1 for positions, 0.02 for biases; layer scales
    1 ± 0.1; LayerNorms at 1 and 0. Scaled so that texts and image regions get embeddings that
    differ (names vary with the image), though not with meaning."""
    if name not in RANDOM_CLIPS:
        raise ValueError(f"unknown random CLIP {name!r}; available: {list(RANDOM_CLIPS)}")
    model = ClipModel(TINY_CLIP)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if key == "logit_scale":
                continue
            mean, std = 0.0, 0.02
            if key.endswith(".gamma"):
                mean, std = 1.0, 0.1
            elif key == "token_embedding.weight":
                std = 1.0
            elif key == "positional_embedding":
                std = 0.1
            elif key == "text_projection":
                std = parameter.shape[0] ** -0.5
            elif parameter.ndim >= 2:
                std = math.prod(parameter.shape[1:]) ** -0.5
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std + mean)
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
    return model


def check_clip_available(name: str, offline: bool = False) -> None:
    """Fail fast, before any worker starts, when the CLIP's weights certainly cannot be loaded."""
    if name in RANDOM_CLIPS:
        return
    if is_local(name):
        problems = [weights_problem(name, marker, offline) for marker in WEIGHT_FILES]
        problem = problems[0] if all(problems) else None
    elif any(isinstance(try_to_load_from_cache(name, marker), str) for marker in WEIGHT_FILES):
        problem = None
    else:  # not cached: offline, or a hub that cannot give it
        problem = weights_problem(name, WEIGHT_FILES[0], offline)
    if problem:
        raise ClipNotFoundError(_missing_weights_message(name, problem))


def _load_pretrained(source: str, offline: bool) -> ClipModel:
    check_clip_available(source, offline)
    try:
        config, weights = _fetch(source, offline)
        arch = ClipArchitecture.from_open_clip(config)
        state = _read_state(weights)
    except (OSError, ValueError) as error:  # hub errors and missing files are OSError subclasses
        raise ClipNotFoundError(_missing_weights_message(source, f"{type(error).__name__}: {error}")) from error
    with torch.device("meta"):  # no memory nor random initialisation for weights about to be replaced
        model = ClipModel(arch)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise ClipNotFoundError(
            f"The weights in {source!r} are not an open_clip ConvNeXt CLIP of the architecture its config "
            f"names ({str(error).splitlines()[0][:300]} …)."
        ) from error
    model.attn_mask = causal_mask(arch.context_length)
    return model


def _fetch(source: str, offline: bool) -> tuple[dict, Path]:
    """(open_clip model config, weights file) of a local folder or hub id."""
    if is_local(source):
        folder = Path(source).expanduser()
        config_file = folder / CONFIG_FILE
        weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{folder} holds none of {list(WEIGHT_FILES)}")
    else:
        from huggingface_hub import hf_hub_download

        weights = None
        for filename in WEIGHT_FILES:
            try:
                weights = Path(hf_hub_download(source, filename, local_files_only=offline))
                break
            except OSError:
                continue
        if weights is None:
            raise FileNotFoundError(f"{source} has none of {list(WEIGHT_FILES)}")
        try:
            config_file = Path(hf_hub_download(source, CONFIG_FILE, local_files_only=offline))
        except OSError:
            config_file = None
    if config_file is None or not config_file.is_file():
        return CONVNEXT_LARGE_D_320, weights
    config = json.loads(config_file.read_text())
    return config.get("model_cfg", config), weights


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _missing_weights_message(source: str, reason: str) -> str:
    return (
        f"Could not load a CLIP model from {source!r} ({reason.splitlines()[0] if reason else 'no weights'}).\n"
        "naming='clip' needs an open_clip ConvNeXt CLIP (open_clip_config.json and open_clip_model.safetensors "
        "or open_clip_pytorch_model.bin). To provide one:\n"
        f"  1. on a machine with internet access: huggingface-cli download {DEFAULT_CLIP_MODEL} "
        "--local-dir /models/clip-convnext-large,\n"
        "     then pass clip_model=/models/clip-convnext-large (a local folder), or\n"
        "  2. keep a hub id and point HF_HOME at a cache that holds it; add --offline on machines without internet.\n"
        "For a smoke test without weights use clip_model=tiny-clip (random weights, random names)."
    )


__all__ = [
    "DEFAULT_CLIP_MODEL",
    "RANDOM_CLIPS",
    "Clip",
    "ClipArchitecture",
    "ClipModel",
    "ClipNotFoundError",
    "build_random_clip",
    "cached_clip",
    "check_clip_available",
    "load_clip",
]
