"""Images and broken files generated in code, so every test input is reproducible and reviewable."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

SAMPLES = "samples/kermany-val16"


def chest_like(width: int = 320, height: int = 256, seed: int = 0) -> np.ndarray:
    """A grayscale gradient with noise: has contrast, like any real radiograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 60 + 120 * np.exp(-(((x - width / 2) / (width / 3)) ** 2)) * (y / height)
    return np.clip(base + rng.normal(0, 12, size=base.shape), 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def jpeg(width: int = 320, height: int = 256, seed: int = 0) -> bytes:
    return encode(Image.fromarray(chest_like(width, height, seed)), "JPEG", quality=90)


def png(width: int = 320, height: int = 256, seed: int = 0) -> bytes:
    return encode(Image.fromarray(chest_like(width, height, seed)), "PNG")


def png_16bit(width: int = 300, height: int = 240) -> bytes:
    """A 12-bit X-ray stored in 16 bits: convert("L") would clip it to white."""
    values = (chest_like(width, height).astype(np.uint16) * 16).astype(np.uint16)  # 0..4080
    return encode(Image.fromarray(values), "PNG")


def png_rgba(width: int = 300, height: int = 240) -> bytes:
    gray = chest_like(width, height)
    alpha = np.full_like(gray, 255)
    alpha[:, : width // 4] = 0  # a transparent band
    rgba = np.stack([gray, gray, gray, alpha], axis=-1)
    return encode(Image.fromarray(rgba), "PNG")


def png_palette(width: int = 300, height: int = 240) -> bytes:
    return encode(Image.fromarray(chest_like(width, height)).convert("P"), "PNG")


def jpeg_cmyk(width: int = 300, height: int = 240) -> bytes:
    return encode(Image.fromarray(chest_like(width, height)).convert("CMYK"), "JPEG")


def jpeg_exif_rotated(width: int = 320, height: int = 200) -> bytes:
    """Stored landscape, EXIF orientation 6 (rotate 90° clockwise to display): portrait when shown."""
    image = Image.fromarray(chest_like(width, height))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.fromarray(chest_like(64, 64, seed)).convert("P") for seed in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def animated_png() -> bytes:
    frames = [Image.fromarray(chest_like(64, 64, seed)) for seed in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def png_bomb_header(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG signature and IHDR declaring 2.5 gigapixels, then a tiny IDAT: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def jpeg_bomb_header() -> bytes:
    """A real JPEG whose SOF0 frame header is patched to claim 60000x60000 pixels."""
    data = bytearray(jpeg(64, 64))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 60_000, 60_000)
    return bytes(data)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def minimal_pdf() -> bytes:
    return b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def dicom_like() -> bytes:
    return b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\x00" * 64


def broken_corpus() -> dict[str, tuple[bytes, str]]:
    """File name -> (bytes, the rejection code the normaliser must give)."""
    good_png = png()
    return {
        "empty.png": (b"", "empty"),
        "notes.jpeg": (b"patient notes, not an image\n" * 4, "not_an_image"),
        "report.pdf": (minimal_pdf(), "unsupported_format"),
        "scan.dcm": (dicom_like(), "dicom_unsupported"),
        "half.jpeg": (truncated(jpeg(), 0.5), "corrupt"),
        "half.png": (truncated(good_png, 0.6), "corrupt"),
        "bomb.png": (png_bomb_header(), "too_many_pixels"),
        "bomb.jpeg": (jpeg_bomb_header(), "too_many_pixels"),
        "animated.gif": (animated_gif(), "unsupported_format"),
        "animated.png": (animated_png(), "animated"),
        "flat.png": (encode(Image.new("L", (64, 64), 128), "PNG"), "blank"),
        "tiny.png": (encode(Image.fromarray(chest_like(20, 20)), "PNG"), "too_small"),
        "strip.png": (encode(Image.fromarray(chest_like(400, 40)), "PNG"), "bad_aspect"),
        "random.bin": (bytes(range(256)) * 8, "not_an_image"),
    }
