"""Test inputs: a folder of real images beside every kind of bad or unusual input the job must
survive, and WebDataset tar shards."""

from __future__ import annotations

import io
import json
import shutil
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from helpers import IMAGES
from PIL import Image

# image_id → (height, width) as displayed, for inputs that must segment.
GOOD = {
    "135069.jpg": (321, 481),
    "horses/horse001.jpg": (590, 800),
    "odd/cmyk.jpg": (48, 64),
    "odd/gray16.png": (40, 56),
    "odd/gray.png": (30, 50),
    "odd/palette.png": (32, 32),
    "odd/rgba.png": (20, 36),
    "odd/exif_rotated.jpg": (60, 40),  # stored 60 wide × 40 high, EXIF orientation 6
    "odd/one_pixel.png": (1, 1),
}
# image_id → the reason code of its error row.
BAD = {
    "corrupt.jpg": "truncated",
    "bad/zero_bytes.jpg": "empty_file",
    "bad/not_an_image.png": "not_an_image",
    "bad/broken_data.png": "corrupt",
    "bad/gigantic.png": "too_large",
}


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def broken_png(data: bytes) -> bytes:
    """A PNG whose compressed pixel data is overwritten halfway through (chunk CRCs no longer match)."""
    middle = len(data) // 2
    return data[:middle] + b"\x00" * 64 + data[middle + 64 :]


def gigantic_png(width: int = 12_000, height: int = 10_000) -> bytes:
    """A valid 1×1 PNG whose header claims ``width × height`` (a decompression bomb's header)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def make_fault_folder(root: Path) -> Path:
    """Write the GOOD and BAD inputs under ``root``; returns ``root``."""
    (root / "horses").mkdir(parents=True)
    for name in ("135069.jpg", "corrupt.jpg", "horses/horse001.jpg"):
        shutil.copy(IMAGES / name, root / name)
    photo = Image.open(IMAGES / "135069.jpg")
    files = {
        "odd/cmyk.jpg": encode(photo.resize((64, 48)).convert("CMYK"), "JPEG"),
        "odd/gray16.png": encode(Image.fromarray((np.arange(40 * 56).reshape(40, 56) * 29).astype(np.uint16)), "PNG"),
        "odd/gray.png": encode(photo.resize((50, 30)).convert("L"), "PNG"),
        "odd/palette.png": encode(
            photo.resize((32, 32)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"
        ),
        "odd/rgba.png": encode(photo.resize((36, 20)).convert("RGBA"), "PNG"),
        "odd/exif_rotated.jpg": encode(photo.resize((60, 40)), "JPEG", exif=_orientation(6)),
        "odd/one_pixel.png": encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
        "bad/zero_bytes.jpg": b"",
        "bad/not_an_image.png": b"these are notes, not pixels\n" * 10,
        "bad/broken_data.png": broken_png(encode(photo.resize((64, 64)), "PNG")),
        "bad/gigantic.png": gigantic_png(),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def write_tar(path: Path, root: Path, names: list[str]) -> None:
    """A WebDataset shard: each image of ``root`` as a member, beside a ``key.json`` companion."""
    with tarfile.open(path, "w") as archive:
        for name in names:
            archive.add(root / name, arcname=name)
            meta = path.parent / "meta.json"
            meta.write_text(json.dumps({"caption": name}))
            archive.add(meta, arcname=name.rsplit(".", 1)[0] + ".json")
