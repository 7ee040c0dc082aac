"""Image decoding and the geometry between an original image and the model input.

Geometries (``ExtractConfig.geometry``):
- ``center_crop`` (DiffSeg's protocol): the centred square of side min(H, W), resized to S×S.
- ``squash``: the whole image resized to S×S, aspect ratio not kept.
- ``aspect``: the whole image resized so its longer side is S and the shorter side is the
  nearest multiple of 64 (at least 64); the latent is then not square.
Resizing is bilinear with half-pixel centres and, by default, no antialiasing, as
``tf.image.resize`` in the official DiffSeg code.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps

GeometryMode = Literal["center_crop", "squash", "aspect"]
GEOMETRIES: tuple[GeometryMode, ...] = ("center_crop", "squash", "aspect")
SIDE_MULTIPLE = 64  # model input sides are multiples of 64 px: three UNet halvings of an 8× latent


@dataclass(frozen=True)
class Geometry:
    """Where a model input came from: ``box`` = (top, left, height, width) of the original
    image (``original_hw``) that was resized to ``input_hw``; all in pixels."""

    original_hw: tuple[int, int]
    box: tuple[int, int, int, int]
    input_hw: tuple[int, int]


def plan_geometry(original_hw: tuple[int, int], size: int, mode: GeometryMode) -> Geometry:
    """The crop box and model input size for an image of ``original_hw`` (H, W)."""
    height, width = original_hw
    if mode == "center_crop":
        side = min(height, width)
        box = ((height - side) // 2, (width - side) // 2, side, side)
        return Geometry(original_hw, box, (size, size))
    box = (0, 0, height, width)
    if mode == "squash":
        return Geometry(original_hw, box, (size, size))
    if mode == "aspect":
        long_side = max(height, width)
        short = max(SIDE_MULTIPLE, round(min(height, width) * size / long_side / SIDE_MULTIPLE) * SIDE_MULTIPLE)
        input_hw = (size, short) if height >= width else (short, size)
        return Geometry(original_hw, box, input_hw)
    raise ValueError(f"geometry must be one of {GEOMETRIES}; got {mode!r}")


def decode_image(data: bytes) -> Image.Image:
    """Decode encoded image bytes to an RGB PIL image, EXIF orientation applied.

    Raises ``ValueError`` with a readable reason for empty, truncated or non-image data.
    """
    if not data:
        raise ValueError("empty file")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot decode image: {error}") from error


def as_rgb_array(image: str | Image.Image | np.ndarray) -> np.ndarray:
    """A path, PIL image or (H, W, 3) uint8 array → (H, W, 3) uint8 RGB array."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"array images must be (H, W, 3) uint8; got {image.shape} {image.dtype}")
        return image
    if isinstance(image, Image.Image):
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    with open(image, "rb") as handle:
        return np.asarray(decode_image(handle.read()))


def bilinear_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D bilinear resampling with half-pixel centres and no antialiasing (TF2 ``resize``,
    torch ``align_corners=False``): for each output pixel the two source indices (low, high)
    and the weight of ``high``, float32."""
    source = np.clip((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0, size_in - 1)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    return low, high, (source - low).astype(np.float32)


def resize_bilinear(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 → (h, w, 3) uint8, bilinear without antialiasing.

    Only the source rows and columns that output pixels sample are read, so memory stays at
    O(h·W) however large the image.
    """
    r_low, r_high, r_frac = bilinear_taps(rgb.shape[0], size[0])
    c_low, c_high, c_frac = bilinear_taps(rgb.shape[1], size[1])
    rows = rgb[r_low] * (1.0 - r_frac)[:, None, None] + rgb[r_high] * r_frac[:, None, None]
    out = rows[:, c_low] * (1.0 - c_frac)[None, :, None] + rows[:, c_high] * c_frac[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def prepare_image(rgb: np.ndarray, size: int, mode: GeometryMode, antialias: bool = False) -> tuple[np.ndarray, Geometry]:
    """Crop and resize an (H, W, 3) uint8 image to the model input: ((h, w, 3) uint8, geometry).

    ``antialias=False`` (the official DiffSeg preprocessing) samples bilinearly; ``True`` uses
    PIL's bilinear filter, which widens its support when shrinking.
    """
    geometry = plan_geometry(rgb.shape[:2], size, mode)
    top, left, box_h, box_w = geometry.box
    crop = rgb[top : top + box_h, left : left + box_w]
    if antialias:
        resized = Image.fromarray(np.ascontiguousarray(crop)).resize(geometry.input_hw[::-1], Image.Resampling.BILINEAR)
        return np.asarray(resized), geometry
    return resize_bilinear(crop, geometry.input_hw), geometry


def to_model_input(batch: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(B, h, w, 3) uint8 → (B, 3, h, w) in [-1, 1] on ``device``."""
    pixels = torch.as_tensor(batch)
    if device.type == "cuda":
        pixels = pixels.pin_memory()
    pixels = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2)
    return (pixels.float() / 127.5 - 1.0).to(dtype).contiguous()
