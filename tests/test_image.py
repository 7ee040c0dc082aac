import io

import numpy as np
import pytest
from faults import gigantic_png
from PIL import Image

from dsseg.io.frames import labels_to_original, resize_labels
from dsseg.io.images import Geometry, InputError, decode_image, displayed_size, plan_geometry, prepare_image


def _encode(image: Image.Image, fmt="JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_center_crop_geometry_matches_the_official_crop():
    geometry = plan_geometry((321, 481), 512, "center_crop")
    assert geometry == Geometry((321, 481), (0, 80, 321, 321), (512, 512))
    assert plan_geometry((481, 321), 512, "center_crop").box == (80, 0, 321, 321)


def test_aspect_geometry_keeps_the_whole_image_at_multiples_of_64():
    assert plan_geometry((321, 481), 512, "aspect").input_hw == (320, 512)
    assert plan_geometry((2000, 100), 512, "aspect").input_hw == (512, 64)
    assert plan_geometry((321, 481), 512, "squash") == Geometry((321, 481), (0, 0, 321, 481), (512, 512))


def test_prepare_image_resizes_bilinearly_without_antialias(bsds_image):
    pixels, geometry = prepare_image(bsds_image, 512, "center_crop")
    assert pixels.shape == (512, 512, 3) and pixels.dtype == np.uint8
    # Upsampling 321 → 512: output pixel 0 sits on source pixel 0 of the crop (half-pixel centres).
    assert np.abs(pixels[0, 0].astype(int) - bsds_image[0, 80].astype(int)).max() <= 1
    constant = np.full((100, 300, 3), 77, dtype=np.uint8)
    assert (prepare_image(constant, 256, "aspect")[0] == 77).all()


def test_decode_errors_are_readable():
    with pytest.raises(ValueError, match="^empty_file: "):
        decode_image(b"")
    with pytest.raises(ValueError, match="^not_an_image: cannot identify"):
        decode_image(b"this is not an image")
    data = _encode(Image.new("RGB", (64, 64), "red"))
    with pytest.raises(ValueError, match="^truncated: "):
        decode_image(data[: len(data) // 2])
    # Cut inside the header, Pillow cannot even identify the file: still a damaged image, not "not an image".
    for cut in (data[:40], _encode(Image.new("RGB", (8, 8)), "PNG")[:30]):
        with pytest.raises(ValueError, match="^truncated: "):
            decode_image(cut)
    header_damaged = data[:4] + b"\x00" * 200 + data[-2:]  # a JPEG's first and last bytes, garbage between
    with pytest.raises(ValueError, match="^(corrupt|truncated): "):
        decode_image(header_damaged)


def test_decode_converts_modes_and_applies_exif_orientation():
    gray, size = decode_image(_encode(Image.new("L", (40, 20), 128), "PNG"))
    assert gray.shape == (20, 40, 3) and size == (20, 40) and (gray == 128).all()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    rotated, size = decode_image(_encode(Image.new("RGB", (40, 20), "blue"), exif=exif))
    assert rotated.shape[:2] == size == (40, 20)
    assert displayed_size(_encode(Image.new("RGB", (40, 20), "blue"), exif=exif)) == (40, 20)  # header only
    assert displayed_size(_encode(Image.new("RGB", (40, 20), "blue"), exif=exif), exif_transpose=False) == (20, 40)


def test_labels_back_to_the_original_image():
    labels = np.arange(16).reshape(4, 4)
    same = labels_to_original(labels, Geometry((4, 4), (0, 0, 4, 4), (4, 4)))
    assert np.array_equal(same, labels)
    # Centre crop of a 4×8 image: columns outside the box copy the nearest box column.
    wide = labels_to_original(labels, Geometry((4, 8), (0, 2, 4, 4), (4, 4)))
    assert wide.shape == (4, 8)
    assert np.array_equal(wide[:, 2:6], labels)
    assert np.array_equal(wide[:, 0], labels[:, 0]) and np.array_equal(wide[:, 7], labels[:, 3])
    assert np.array_equal(resize_labels(labels, (8, 8))[::2, ::2], labels)


def test_max_pixels_replaces_pillows_decompression_bomb_limit():
    header = gigantic_png(20_000, 10_000)  # 200 MP: beyond Pillow's own limit (~179 MP)
    with pytest.raises(InputError, match="^too_large: .*max_pixels"):
        decode_image(header, max_pixels=100_000_000)
    with pytest.raises(
        InputError, match="^(truncated|corrupt): "
    ):  # past the header check: only the pixels are missing
        decode_image(header, max_pixels=300_000_000)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's setting is restored
