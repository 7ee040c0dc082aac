"""Writes tiny_clip.npz: open_clip's own outputs for the weights of dsseg's ``tiny-clip`` (seed 0).

Not run by the tests (it needs open_clip with its timm and torchvision dependencies, which dsseg does
not install): run it by hand where they are installed, from the repository root,

    PYTHONPATH=. python tests/data/golden/clip/make_golden.py

It builds open_clip's ``CLIP`` with a timm ``ConvNeXt`` trunk of tiny-clip's widths and open_clip's
``TimmModel`` MLP head, loads ``build_random_clip("tiny-clip", 0)``'s state dict into it strictly,
and records, for a fixed image and texts, what the released DiffCut classifier reads: the dense
features (``extract_features_convnext``), the pooled-feature embeddings
(``visual_prediction_forward_convnext``), the text features (``encode_text``, not normalised) and
the token ids of open_clip's tokenizer.
"""

from collections import OrderedDict
from pathlib import Path

import numpy as np
import open_clip
import timm
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from timm.layers import Mlp

from dsseg.model.clip import TINY_CLIP, build_random_clip

TEXTS = ["a photo of a horse.", "There is a small tv monitor in the scene.", "This is a photo of a background"]


def image() -> torch.Tensor:
    """A fixed (1, 3, 64, 96) image in [0, 1]: smooth ramps and a bright square."""
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 96), indexing="ij")
    pixels = torch.stack([x, y, (x * y) ** 0.5])
    pixels[:, 16:40, 24:60] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]
    return pixels[None]


def main() -> None:
    arch = TINY_CLIP
    reference = open_clip.model.CLIP(
        embed_dim=arch.embed_dim,
        vision_cfg=CLIPVisionCfg(timm_model_name="convnext_tiny", timm_pool="", timm_proj="mlp", image_size=64),
        text_cfg=CLIPTextCfg(width=arch.text_width, heads=arch.text_heads, layers=arch.text_layers),
    )
    trunk = timm.models.convnext.ConvNeXt(depths=arch.depths, dims=arch.dims)
    trunk.reset_classifier(0)
    reference.visual.trunk = trunk
    reference.visual.head = torch.nn.Sequential(
        OrderedDict(mlp=Mlp(arch.dims[-1], 2 * arch.embed_dim, arch.embed_dim, bias=(True, False)))
    )
    reference.load_state_dict(build_random_clip("tiny-clip", 0).state_dict(), strict=True)
    reference.eval()
    with torch.no_grad():
        x = image()
        dense = reference.visual.trunk.stem(x)
        for stage in reference.visual.trunk.stages:
            dense = stage(dense)
        dense = reference.visual.trunk.norm_pre(dense)
        pooled = torch.cat([dense.mean(dim=(2, 3)), dense[:, :, 0, 0], torch.zeros_like(dense[:, :, 0, 0])])
        embedded = reference.visual.head(reference.visual.trunk.head(pooled[:, :, None, None]))
        ids = open_clip.get_tokenizer("convnext_large_d_320")(TEXTS)
        text = reference.encode_text(ids)
    np.savez_compressed(
        Path(__file__).with_name("tiny_clip.npz"),
        image=x.numpy(),
        dense=dense.numpy(),
        pooled=pooled.numpy(),
        embedded=embedded.numpy(),
        texts=np.array(TEXTS),
        ids=ids.numpy(),
        text=text.numpy(),
        versions=np.array(
            [f"open_clip {open_clip.__version__}", f"timm {timm.__version__}", f"torch {torch.__version__}"]
        ),
    )


if __name__ == "__main__":
    main()
