"""Image decoding and the geometry between an original image and the model input.

Geometries (``ExtractConfig.geometry``):
- ``center_crop`` (DiffSeg's protocol): the centred square of side min(H, W), resized to S×S.
- ``diffcut_crop`` (DiffCut's released dataloader, ``dataloader/iterator.py``): torchvision's
  ``CenterCrop`` of side min(H, W) − 1, i.e. the square at top = round((H − side)/2), left =
  round((W − side)/2) with Python's rounding (halves to even: 0 on the short side, ⌊·⌋ or ⌈·⌉ on
  the long one), resized to S×S.
- ``squash``: the whole image resized to S×S, aspect ratio not kept.
- ``aspect``: the whole image resized so its longer side is S and the shorter side is the
  nearest multiple of 64 (at least 64); the latent is then not square.
Resizing is bilinear with half-pixel centres and, by default, no antialiasing, as
``tf.image.resize`` in the official DiffSeg code.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

GeometryMode = Literal["center_crop", "squash", "aspect", "diffcut_crop"]
GEOMETRIES: tuple[GeometryMode, ...] = ("center_crop", "squash", "aspect", "diffcut_crop")
SIDE_MULTIPLE = 64  # model input sides are multiples of 64 px: three UNet halvings of an 8× latent


@dataclass(frozen=True)
class Geometry:
    """Where a model input came from: ``box`` = (top, left, height, width) of the original
    image (``original_hw``) that was resized to ``input_hw``; all in pixels (the box may be
    fractional when the image was decoded downscaled)."""

    original_hw: tuple[int, int]
    box: tuple[float, float, float, float]
    input_hw: tuple[int, int]


def plan_geometry(original_hw: tuple[int, int], size: int, mode: GeometryMode) -> Geometry:
    """The crop box and model input size for an image of ``original_hw`` (H, W)."""
    height, width = original_hw
    if mode == "center_crop":
        side = min(height, width)
        box = ((height - side) // 2, (width - side) // 2, side, side)
        return Geometry(original_hw, box, (size, size))
    if mode == "diffcut_crop":
        side = max(1, min(height, width) - 1)
        box = (round((height - side) / 2), round((width - side) / 2), side, side)  # torchvision's CenterCrop
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


class InputError(ValueError):
    """A bad input image. ``reason`` is a short code for grouping errors: ``empty_file``,
    ``not_an_image``, ``truncated``, ``corrupt``, ``too_large``, ``read_failed``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# Decompression-bomb limit (pixels in the file's header), checked before any pixel is decoded.
DEFAULT_MAX_PIXELS = 100_000_000
EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


def _open_checked(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A lazily decoded PIL image from encoded bytes, its header checked against ``max_pixels``.

    Raises ``InputError`` (``empty_file``, ``not_an_image``, ``corrupt``, ``too_large``).
    """
    if not data:
        raise InputError("empty_file", "the file has 0 bytes")
    pillow_limit = Image.MAX_IMAGE_PIXELS
    try:
        # Our header check below replaces Pillow's decompression-bomb limit (~179 MP), so that
        # --max-pixels can also raise it; Pillow's own limit is restored straight after.
        Image.MAX_IMAGE_PIXELS = None
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        damaged = _damaged_header_reason(data)
        if damaged:
            raise InputError(damaged, "the file starts as an image but its header cannot be read") from None
        raise InputError(
            "not_an_image", "cannot identify image file (not an image, or a format Pillow cannot read)"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(_damage_reason(error), f"cannot read the image header: {error}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(
            "too_large",
            f"{width}×{height} = {width * height / 1e6:.1f} MP exceeds the limit of {max_pixels / 1e6:.1f} MP (max_pixels)",
        )
    return image


def displayed_size(data: bytes, exif_transpose: bool = True) -> tuple[int, int]:
    """The (H, W) ``decode_image`` reports for ``data``, read from the header alone (no pixels
    decoded). Raises ``InputError`` as ``decode_image`` does for a header it cannot read."""
    image = _open_checked(data, max_pixels=None)
    width, height = image.size
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1) if exif_transpose else 1
    except Exception:  # decode_image keeps an image with a malformed EXIF block as stored
        orientation = 1
    return (width, height) if orientation in TRANSPOSING_ORIENTATIONS else (height, width)


def decode_image(
    data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS, max_side: int | None = None, exif_transpose: bool = True
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode encoded image bytes → ((h, w, 3) uint8 RGB, original (H, W)), EXIF orientation applied.

    ``original (H, W)`` is the displayed size (after EXIF rotation). ``exif_transpose=False`` keeps
    the stored pixel order, the order benchmark labels were drawn in (as the official evaluation
    code decodes them). With ``max_side`` the pixels
    are downscaled so that max(h, w) ≤ max_side (JPEGs decode directly at a reduced DCT scale),
    while the original size is still reported, so masks can be drawn at full size. 16-bit and
    32-bit grayscale are scaled to 8 bits (65535 → 255); palette, CMYK, alpha and 1-bit modes
    are converted to RGB. Raises ``InputError`` with a reason code.
    """
    image = _open_checked(data, max_pixels)
    width, height = image.size
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        image.draft(image.mode, (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
    try:
        image.load()  # before getexif: for some formats reading EXIF loads the image and hides errors
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(_damage_reason(error), f"cannot decode image: {error}") from None
    orientation = 1
    if exif_transpose:
        try:
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            image = ImageOps.exif_transpose(image)
        except Exception:  # a malformed EXIF block is not worth losing the image for: keep it as stored
            orientation = 1
    original_hw = (width, height) if orientation in TRANSPOSING_ORIENTATIONS else (height, width)
    rgb = _to_rgb(image)
    if max_side is not None and max(rgb.shape[:2]) > max_side:
        scale = max_side / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    return rgb, original_hw


# Leading bytes of the formats Pillow reads, and the bytes a whole file of that format ends with
# (None: the format has no end marker).
IMAGE_SIGNATURES = {
    b"\xff\xd8\xff": b"\xff\xd9",  # JPEG: SOI … EOI
    b"\x89PNG\r\n\x1a\n": b"IEND\xaeB`\x82",  # PNG: … IEND chunk and its CRC
    b"GIF87a": b";",
    b"GIF89a": b";",
    b"II*\x00": None,  # TIFF
    b"MM\x00*": None,
}


def _damaged_header_reason(data: bytes) -> str | None:
    """For a file Pillow cannot identify: ``truncated`` when it starts as a known image format
    but lacks that format's end marker, ``corrupt`` when it has it (or the format has none),
    None when it does not start as an image at all."""
    for signature, end in IMAGE_SIGNATURES.items():
        if data.startswith(signature):
            return "truncated" if end is not None and not data.rstrip(b"\x00").endswith(end) else "corrupt"
    return None


def _damage_reason(error: Exception) -> str:
    return "truncated" if "truncated" in str(error).lower() else "corrupt"


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL mode → (H, W, 3) uint8. High-bit grayscale (16/32-bit int, float) keeps its
    contrast: values above 255 are divided by 257 (the 16-bit range onto 8 bits), float images
    in [0, 1] are multiplied by 255."""
    if image.mode not in HIGH_BIT_MODES:
        return np.asarray(image.convert("RGB"))
    values = np.asarray(image, dtype=np.float32)
    high = float(values.max()) if values.size else 0.0
    if high > 255.0:
        values = values / 257.0
    elif image.mode == "F" and high <= 1.0:
        values = values * 255.0
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def load_rgb(image: str | Image.Image | np.ndarray) -> np.ndarray:
    """A path, PIL image or (H, W, 3) uint8 array → (H, W, 3) uint8 RGB array (photos upright by
    EXIF). The one way to load a user's image; encoded bytes go through ``decode_image``."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"array images must be (H, W, 3) uint8; got {image.shape} {image.dtype}")
        return image
    if isinstance(image, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(image))
    with open(image, "rb") as handle:
        return decode_image(handle.read(), max_pixels=None)[0]


def rescale_geometry(geometry: Geometry, original_hw: tuple[int, int]) -> Geometry:
    """The same geometry for an image that was decoded downscaled: the box is scaled from the
    decoded frame (``geometry.original_hw``) to ``original_hw`` (fractional pixels allowed)."""
    if tuple(original_hw) == tuple(geometry.original_hw):
        return geometry
    sy = original_hw[0] / geometry.original_hw[0]
    sx = original_hw[1] / geometry.original_hw[1]
    top, left, height, width = geometry.box
    return Geometry(tuple(original_hw), (top * sy, left * sx, height * sy, width * sx), geometry.input_hw)


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


def prepare_image(
    rgb: np.ndarray, size: int, mode: GeometryMode, antialias: bool = False
) -> tuple[np.ndarray, Geometry]:
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
