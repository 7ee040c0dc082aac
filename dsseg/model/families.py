"""Which family a backbone name belongs to, answered without loading torch or any weights.

- ``unet``: Stable Diffusion v1.x/v2.x and SDXL-class UNets (self- and cross-attention layers at
  four or three resolutions of the latent; DDPM noise schedule).
- ``mmdit``: Stable Diffusion 3 / 3.5 MM-DiT transformers (one token grid, the latent over the
  patch size; joint attention of image and text tokens per block; flow-matching noise).

The family decides which extraction settings and methods a run can use (``dsseg.checks.check_family``),
so it is known when a run is planned, before any worker loads a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from dsseg.model.hub import is_local

Family = Literal["unet", "mmdit"]
FAMILIES: tuple[Family, ...] = ("unet", "mmdit")
RANDOM_UNETS = ("tiny", "sd-v1-random", "tiny-sdxl", "sdxl-random")
RANDOM_MMDITS = ("tiny-sd3", "sd3-random")
RANDOM_BACKBONES = RANDOM_UNETS + RANDOM_MMDITS
MMDIT_HUB_HINTS = ("stable-diffusion-3", "sd3")  # hub ids of SD3 / SD3.5 pipelines contain one of these


def backbone_family(name: str) -> Family:
    """``name`` (a random backbone, hub id or local diffusers folder) → its family: a folder with
    ``transformer/`` (or a ``model_index.json`` naming an SD3 pipeline) is MM-DiT; a hub id is MM-DiT
    when its repository name says SD3 (``stabilityai/stable-diffusion-3-medium-diffusers``,
    ``stabilityai/stable-diffusion-3.5-large``); everything else is a UNet."""
    if name in RANDOM_BACKBONES:
        return "mmdit" if name in RANDOM_MMDITS else "unet"
    if is_local(name):
        folder = Path(name).expanduser()
        if (folder / "transformer").is_dir():
            return "mmdit"
        index = folder / "model_index.json"
        if index.is_file():
            try:
                pipeline = json.loads(index.read_text()).get("_class_name", "")
            except (OSError, ValueError):
                pipeline = ""
            if "StableDiffusion3" in pipeline:
                return "mmdit"
        return "unet"
    repository = name.rsplit("/", 1)[-1].lower()
    return "mmdit" if any(hint in repository for hint in MMDIT_HUB_HINTS) else "unet"
