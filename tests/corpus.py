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


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb_header(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG signature and IHDR declaring 2.5 gigapixels, then a tiny IDAT: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + idat + png_chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A 64x64 JPEG (about 1.2 KB of scan data) whose frame header claims ``width`` x ``height``."""
    data = bytearray(jpeg(64, 64))
    struct.pack_into(">HH", data, data.index(b"\xff\xc0") + 5, height, width)
    return bytes(data)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def jpeg_cut_then_closed(keep: float = 0.5, mode: str = "L", border: int | None = None) -> bytes:
    """A baseline JPEG cut short, with an end-of-image marker appended: decodes with no error, the rest a grey fill.

    ``border`` first paints the bottom quarter one value, like a collimated film's uniform edge.
    """
    pixels = chest_like(320, 256)
    if border is not None:
        pixels[192:] = border
    data = encode(Image.fromarray(pixels).convert(mode), "JPEG", quality=90)
    return data[: int(len(data) * keep)] + b"\xff\xd9"


def png_chunks(data: bytes) -> list[tuple[bytes, int]]:
    """(type, offset of the length field) of every chunk of a PNG."""
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks.append((kind, pos))
        pos += 12 + length
    return chunks


def png_with_text(seed: int = 0) -> bytes:
    """A PNG with an ancillary tEXt chunk after the image data (only a full walk reaches it)."""
    data = png(64, 64, seed)
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + png_chunk(b"tEXt", b"Comment\x00exported by a scanner") + data[iend:]


def png_bad_crc(kind: bytes, data: bytes | None = None) -> bytes:
    """``data`` (default: a PNG with a tEXt chunk) with one bit of the ``kind`` chunk's CRC flipped."""
    data = bytearray(data or png_with_text())
    pos = dict(png_chunks(bytes(data)))[kind]
    length = struct.unpack_from(">I", data, pos)[0]
    data[pos + 8 + length + 3] ^= 1
    return bytes(data)


def png_short_idat() -> bytes:
    """Every chunk whole, CRCs right, IEND there, but the compressed rows stop halfway: the decoder runs dry."""
    raw = b"".join(b"\x00" + row.tobytes() for row in chest_like(64, 64))
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
    idat = zlib.compress(raw)[: len(raw) // 4]
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_16bit_large(side: int = 3000) -> bytes:
    """A 16-bit PNG of ``side`` squared with identical rows: small to store and fast to decode, large in memory."""
    row = np.linspace(300, 3800, side).astype(np.uint16)
    return encode(Image.fromarray(np.ascontiguousarray(np.broadcast_to(row, (side, side)))), "PNG", compress_level=1)


def minimal_pdf() -> bytes:
    return b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def broken_corpus() -> dict[str, tuple[bytes, str]]:
    """File name -> (bytes, the rejection code the normaliser must give)."""
    good_png = png()
    return {
        "empty.png": (b"", "empty"),
        "notes.jpeg": (b"patient notes, not an image\n" * 4, "not_an_image"),
        "report.pdf": (minimal_pdf(), "unsupported_format"),
        "half.jpeg": (truncated(jpeg(), 0.5), "truncated"),
        "half.png": (truncated(good_png, 0.6), "truncated"),
        "cut-then-closed.jpeg": (jpeg_cut_then_closed(), "truncated"),
        "no-iend.png": (good_png[:-12], "truncated"),
        "short-idat.png": (png_short_idat(), "truncated"),
        "bad-iend-crc.png": (png_bad_crc(b"IEND", good_png), "corrupt"),
        "7000px-in-1k.jpeg": (jpeg_declaring(7000, 7000), "truncated"),
        "7000px-in-1k.png": (png_bomb_header(7000, 7000), "truncated"),
        "bomb.png": (png_bomb_header(), "too_many_pixels"),
        "bomb.jpeg": (jpeg_declaring(60_000, 60_000), "too_many_pixels"),
        "animated.gif": (animated_gif(), "unsupported_format"),
        "animated.png": (animated_png(), "animated"),
        "flat.png": (encode(Image.new("L", (64, 64), 128), "PNG"), "blank"),
        "tiny.png": (encode(Image.fromarray(chest_like(20, 20)), "PNG"), "too_small"),
        "strip.png": (encode(Image.fromarray(chest_like(400, 40)), "PNG"), "bad_aspect"),
        "random.bin": (bytes(range(256)) * 8, "not_an_image"),
    }
