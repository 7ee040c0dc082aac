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
from collections.abc import Sequence
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn

from dsseg.errors import WeightsNotFoundError
from dsseg.model.backbone import resolve_device
from dsseg.model.clip_network import TINY_CLIP, ClipArchitecture, ClipModel, causal_mask
from dsseg.model.hub import is_local, weights_problem
from dsseg.spec import DEFAULT_CLIP_MODEL

RANDOM_CLIPS = ("tiny-clip",)
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# The architecture of open_clip's convnext_large_d_320 (its model_configs/convnext_large_d_320.json),
# used when a folder or hub id holds weights without open_clip_config.json.
CONVNEXT_LARGE_D_320 = {
    "embed_dim": 768,
    "vision_cfg": {"timm_model_name": "convnext_large", "timm_pool": "", "timm_proj": "mlp", "image_size": 320},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 16},
}


class ClipNotFoundError(WeightsNotFoundError):
    """CLIP weights could not be loaded; the message says how to provide them."""


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
