"""The one image normaliser: ingest, training and serving all run this file.

It imports only Pillow and numpy so that the Lambda bundle, the training job's
``sourcedir.tar.gz`` and the endpoint's ``code/`` can all carry it unchanged
(``training_job/imaging.py`` is a symlink to this file, dereferenced when packaged).

Two stages, both deterministic:

* :func:`normalise` turns untrusted upload bytes into the *stored* form: an 8-bit
  grayscale PNG whose longest side is at most ``STORED_MAX_SIDE`` with the aspect
  ratio kept and no padding (so no geometry is lost before the model decides).
* :func:`to_model_input` turns a stored image into the model's input square with
  the resize policy recorded in the model's ``model.json`` (``squash`` or ``pad``),
  identically at training and at serving time.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

Image.LOAD_TRUNCATED_IMAGES = False  # never: a truncated file is rejected, not half-read

MAX_UPLOAD_BYTES = 30 * 1024 * 1024
"""Size cap, checked from the S3 event (or the file system) before anything is read."""
MAX_PIXELS = 60_000_000
"""Pixel cap checked from the header before decoding (a 7,700 px square; X-rays are below 20 MP)."""
MIN_SIDE = 28
"""Smallest accepted side: PneumoniaMNIST's 28 px, the smallest real chest X-ray source we know."""
MAX_ASPECT = 4.0
"""A chest X-ray is roughly square; a 10:1 strip is a scanning or upload accident."""
STORED_MAX_SIDE = 256
"""Longest side of the stored PNG; images are never enlarged."""
STORED_PNG_LEVEL = 6
"""zlib level of the stored PNG (kept: the bytes of a stored copy do not change)."""
WIRE_PNG_LEVEL = 0
"""zlib level of the PNG an endpoint request carries: stored blocks, no deflate (``NormalisedImage.wire_png``)."""
ALLOWED_FORMATS = ("JPEG", "PNG")
RESIZE_POLICIES = ("squash", "pad")
INTENSITY_POLICIES = ("linear", "equalize")
"""How stored grey levels reach a model: as stored, or histogram-equalised (recorded in ``model.json``)."""
ALPHA_POLICY = "composite onto black (transparent regions carry no signal, like unexposed film)"
JPEG_MIN_PIXELS_PER_BYTE = 512
"""Floor on a JPEG's scan data, checked from the header before decoding: one byte per 512 pixels.

A complete Huffman-coded JPEG spends at least one bit on every 8x8 block (its DC code), so none falls
below this (an arithmetic-coded one could, but not with an X-ray's noise in it); the provided X-rays
carry 31x more or above (``bench/normalise_provided.py``). A 1.2 KB file declaring 7000x7000 is a
cut-off or crafted file, rejected before 49 MP are allocated."""
DEFLATE_MAX_RATIO = 1032
"""Deflate's ceiling (a 258-byte match in two 1-bit codes): a PNG's IDAT holds at least 1/1032 of its rows."""
FILL_FRACTION = 1 / 16
"""A JPEG whose bottom sixteenth is exactly libjpeg's fill is truncated (``_check_jpeg_fill``).

The provided X-rays have no bottom row at the fill value; their real uniform borders (collimated
film) are black, up to 7 % of the rows."""
_JPEG_FILL = {"L": (128,), "CMYK": (127, 127, 127, 127)}
"""What libjpeg writes where scan data is missing (all-zero blocks: mid-grey; Pillow inverts Adobe CMYK)."""
_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""A marker that ends entropy-coded data: 0xFF not followed by a stuffed zero, a restart code or a fill byte."""
_JPEG_STANDALONE = {0x01, 0xD8}
"""Markers without a length field (TEM, SOI); the marker search already passes over restart markers."""
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
"""Samples per pixel by PNG colour type (grey, RGB, palette, grey+alpha, RGBA)."""
_STRIP_PIXELS = 1 << 20
"""Mode conversion runs a strip of about a megapixel at a time, so its temporaries stay small."""

COLOURFULNESS_LIMIT = 35.0
"""Largest accepted colourfulness (Hasler and Suesstrunk, "Measuring colourfulness in natural images",
SPIE 5007, 2003: 33 "moderately", 45 "averagely", 59 "quite" colourful). A radiograph is grey: every
Kermany X-ray scores 0, a tinted scan or a phone photo of a film on a light box stays far below."""
COLOUR_SIDE = 64
"""Colourfulness is measured on a thumbnail this size (a JPEG decodes it at 1/8 scale in the DCT domain)."""
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

_SIGNATURES = (  # formats we can name in a rejection without decoding them
    (b"%PDF", "PDF document"),
    (b"GIF8", "GIF image"),
    (b"II*\x00", "TIFF image"),
    (b"MM\x00*", "TIFF image"),
    (b"BM", "BMP image"),
    (b"RIFF", "RIFF container (WebP/AVI/WAV)"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
)


class RejectedImage(ValueError):
    """A permanent, user-facing reason why bytes are not an acceptable X-ray.

    ``code`` is a stable machine-readable token; ``str(exc)`` is the sentence for people.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class NormalisedImage:
    """The stored form of an accepted image and what we learnt about the original.

    ``stored`` is the image itself; ``png`` (what ingest stores) and ``wire_png`` (what an endpoint request
    carries) are its encodings, made on first use. A model in the same process (the endpoint's handler after
    its one decode, the predict function with ``endpoint_mode=lambda``) reads the pixels and encodes nothing.
    """

    stored: Image.Image = field(compare=False, repr=False)
    content_hash: str
    width: int
    height: int
    original_width: int
    original_height: int
    original_format: str
    original_mode: str

    @functools.cached_property
    def png(self) -> bytes:
        """The 8-bit grayscale PNG of ``stored`` (the same bytes whenever it is made): the stored copy."""
        return _png(self.stored, STORED_PNG_LEVEL)

    @functools.cached_property
    def wire_png(self) -> bytes:
        """The same pixels as ``png`` in an uncompressed PNG: what the predict function sends an endpoint.

        Nothing keeps it, so its size hardly matters (at most 256 x 256 bytes of pixels, 66 KB, far under a
        serverless endpoint's 4 MB), while deflate is most of an encode's time: 0.6-0.8 ms to make against
        3-5 ms at ``STORED_PNG_LEVEL``, and the endpoint reads it back in half the time
        (``bench/predict_path.py``). Any PNG reader, an older endpoint's included, decodes it to the same pixels.
        """
        return _png(self.stored, WIRE_PNG_LEVEL)

    @property
    def image_id(self) -> str:
        """Object name stem: a re-delivered event rewrites the very same object."""
        return self.content_hash[:32]


def _png(image: Image.Image, level: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def check_upload_size(n_bytes: int, cap: int = MAX_UPLOAD_BYTES) -> None:
    """Reject by size alone, before a single byte is downloaded."""
    if n_bytes <= 0:
        raise RejectedImage("empty", "the file is empty (0 bytes)")
    if n_bytes > cap:
        raise RejectedImage("too_large", f"the file is {n_bytes / 2**20:.1f} MiB, over the {cap / 2**20:g} MiB cap")


def normalise(data: bytes) -> NormalisedImage:
    """Validate untrusted bytes and return the stored form, or raise :class:`RejectedImage`."""
    check_upload_size(len(data))
    fmt = _sniff_format(data)
    payload = _walk_png(data) if fmt == "PNG" else _walk_jpeg(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        gray, original = _decode(data, fmt, payload)
    return normalise_decoded(gray, *original)


def normalise_decoded(gray: Image.Image, original_width: int, original_height: int, original_format: str,
                      original_mode: str) -> NormalisedImage:
    """The stored form of an upright 8-bit grayscale image another decoder produced (DICOM: ``dicom.py``)."""
    low, high = gray.getextrema()
    if low == high:
        raise RejectedImage("blank", "the image has no contrast: every pixel has the same value")
    stored = _shrink(gray)
    stored.info = {}  # nothing of the upload's metadata (ICC, EXIF, text) reaches the stored PNG
    return _encode(stored, (original_width, original_height, original_format, original_mode))


def open_stored(png: bytes) -> Image.Image:
    """Open a stored PNG (already normalised) as an 8-bit grayscale image."""
    image = Image.open(io.BytesIO(png), formats=["PNG"])
    image.load()
    return image.convert("L") if image.mode != "L" else image


def to_model_input(image: Image.Image, size: int, policy: str, intensity: str = "linear") -> np.ndarray:
    """Resize a stored grayscale image to the model's ``size`` square, as ``float32`` in [0, 1]: its
    :func:`model_levels` divided by 255."""
    return model_levels(image, size, policy, intensity).astype(np.float32) / 255.0


def model_levels(image: Image.Image, size: int, policy: str, intensity: str = "linear") -> np.ndarray:
    """The model input's 8-bit grey levels (``uint8``, ``size`` square): what training holds in memory, one byte a
    pixel (``training_job/data.py``); :func:`to_model_input` is them over 255.

    ``squash`` stretches to the square (the geometry of Kermany's published 224 px copies);
    ``pad`` keeps the aspect ratio and centres the image on black. ``equalize`` first spreads the
    image's own grey levels evenly over 0-255 (Pillow's histogram equalisation), which undoes any
    monotone contrast curve: X-rays from another machine or export look alike to the model.
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}; expected one of {RESIZE_POLICIES}")
    if intensity not in INTENSITY_POLICIES:
        raise ValueError(f"unknown intensity policy {intensity!r}; expected one of {INTENSITY_POLICIES}")
    if image.mode != "L":
        image = image.convert("L")
    if intensity == "equalize":
        image = ImageOps.equalize(image)
    if policy == "squash":
        resized = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    else:
        resized = ImageOps.pad(image, (size, size), Image.Resampling.BILINEAR, color=0)
    return np.asarray(resized, dtype=np.uint8)


def _sniff_format(data: bytes) -> str:
    head = data[:132]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[128:132] == b"DICM":
        raise RejectedImage("dicom_unsupported", "DICOM is decoded by lambdas/domain/dicom.py before this "
                                                 "normaliser (ingest, predict, cxr check); here only JPEG or PNG")
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            raise RejectedImage("unsupported_format", f"{name}, not a JPEG or PNG image")
    if _looks_like_text(head):
        raise RejectedImage("not_an_image", "the file is text, not a JPEG or PNG image")
    raise RejectedImage("not_an_image", "the file is not a JPEG or PNG image (unrecognised content)")


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass(frozen=True)
class _Payload:
    """The compressed pixel data found by walking a file's structure, and the least a complete file holds."""

    size: int
    minimum: int


def _truncated(message: str) -> RejectedImage:
    return RejectedImage("truncated", f"{message}: the file was cut short (re-export or re-upload it whole)")


def _walk_png(data: bytes) -> _Payload:
    """Check every chunk's CRC-32 up to IEND, which must be there; sum the IDAT bytes.

    Pillow checks no CRC of IEND, and none of ancillary chunks when told to load truncated images:
    this walk does not depend on either (PNG spec, section 5.3: the CRC covers chunk type and data).
    """
    view, pos, idat, raw = memoryview(data), 8, 0, 0
    while True:
        if pos + 12 > len(data):
            raise _truncated("the PNG ends before its IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        name, end = kind.decode("ascii", "replace"), pos + 12 + length
        if end > len(data):
            raise _truncated(f"the PNG ends inside its {name} chunk")
        if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            raise RejectedImage("corrupt", f"the PNG's {name} chunk fails its CRC-32 check: the file is damaged")
        if kind == b"IHDR" and length >= 10:
            width, height, depth, colour = struct.unpack_from(">IIBB", data, pos + 8)
            raw = height * ((width * depth * _PNG_CHANNELS.get(colour, 1) + 7) // 8)
        elif kind == b"IDAT":
            idat += length
        elif kind == b"IEND":
            return _Payload(idat, raw // DEFLATE_MAX_RATIO)
        pos = end


def _walk_jpeg(data: bytes) -> _Payload:
    """Follow the markers to an end-of-image marker that comes after scan data; sum the scan bytes.

    Pillow reports a file cut inside its scans only when the decoder runs dry, and cannot see a cut
    closed by an appended EOI (libjpeg then fills the rest; see ``_check_jpeg_fill``).
    """
    pos, scans, scan_bytes, pixels = 2, 0, 0, 0
    while True:
        found = _JPEG_NEXT_MARKER.search(data, pos)  # libjpeg, too, skips stray bytes between segments
        if found is None:
            raise _truncated("the JPEG ends without its end-of-image marker")
        marker, start = data[found.end() - 1], found.end()
        if marker == 0xD9:
            if not scans:
                raise _truncated("the JPEG ends before any image data")
            return _Payload(scan_bytes, math.ceil(pixels / JPEG_MIN_PIXELS_PER_BYTE))
        if marker in _JPEG_STANDALONE:
            pos = start
            continue
        end = start + int.from_bytes(data[start : start + 2], "big")
        if start + 2 > len(data) or end > len(data):
            raise _truncated("the JPEG ends inside a marker segment")
        if marker in _JPEG_SOF and end - start >= 7:
            height, width = struct.unpack_from(">HH", data, start + 3)
            pixels = height * width
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            following = _JPEG_NEXT_MARKER.search(data, end)
            pos = following.start() if following else len(data)
            scans, scan_bytes = scans + 1, scan_bytes + pos - end
        else:
            pos = end


def _decode(data: bytes, fmt: str, payload: _Payload) -> tuple[Image.Image, tuple[int, int, str, str]]:
    """Open with the allow-list, check the header against the caps, decode, return upright 8-bit grayscale."""
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = image.size
        original = (width, height, fmt, image.mode)
        check_geometry(width, height)
        if payload.size < payload.minimum:
            raise _truncated(
                f"the header declares {width}x{height} but the file holds {payload.size:,} bytes of image data, "
                f"under the {payload.minimum:,} any complete {fmt} of that size needs"
            )
        if getattr(image, "n_frames", 1) > 1:
            raise RejectedImage("animated", f"animated {fmt} with {image.n_frames} frames, not a single X-ray")
        _check_colour(image, data, fmt)
        if fmt == "JPEG" and image.mode in ("RGB", "L"):
            # DCT-domain downscaling: decodes large JPEGs at 1/2..1/8 scale, still >= 2x the stored size.
            image.draft("L", (2 * STORED_MAX_SIDE, 2 * STORED_MAX_SIDE))
        image.load()
        if fmt == "JPEG":
            _check_jpeg_fill(image)
        gray = _to_grayscale(image)
        if gray is not image:
            gray.info["exif"] = image.getexif().tobytes()  # the orientation, for the transpose below
        ImageOps.exif_transpose(gray, in_place=True)  # on the 8-bit copy: a quarter of an RGBA original
    except RejectedImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RejectedImage("too_many_pixels", f"the header declares more than {MAX_PIXELS:,} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        if "truncated" in str(exc).lower():  # Pillow: "image file is truncated", "truncated PNG file"
            raise _truncated(f"the {fmt} decoder ran out of data ({_short(exc)})") from None
        raise RejectedImage("corrupt", f"the {fmt} data is corrupt ({_short(exc)})") from None
    return gray, original


def _check_jpeg_fill(image: Image.Image) -> None:
    """Reject a JPEG whose bottom rows are exactly the decoder's fill below real content.

    A JPEG cut short and closed with an end-of-image marker decodes without an error: libjpeg gives
    every block past the cut all-zero coefficients, a uniform mid-grey. A real film's uniform border
    is not exactly that value over whole rows.
    """
    fill = _JPEG_FILL.get(image.mode)
    if fill is None:
        return
    width, height = image.size
    rows = math.ceil(height * FILL_FRACTION)
    flat = tuple((value, value) for value in fill)
    if _band_extrema(image.crop((0, height - rows, width, height))) == flat and _band_extrema(image) != flat:
        raise _truncated(
            f"the bottom {FILL_FRACTION:.0%} or more of the rows is the JPEG decoder's uniform grey fill, not X-ray"
        )


def colourfulness(image: Image.Image) -> float:
    """Hasler and Suesstrunk's colourfulness of an image as shown (alpha composited on black), 0 for grey."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "RGBA"):
        image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image.convert("RGBA"))
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _check_colour(image: Image.Image, data: bytes, fmt: str) -> None:
    """Reject a strongly coloured image (a photograph, a stained slide): plainly not a radiograph."""
    if image.mode in _GREY_MODES:
        return
    if fmt == "JPEG":  # the main decode drafts luma only: read the colours from a separate 1/8-scale decode
        image = Image.open(io.BytesIO(data), formats=["JPEG"])
        image.draft("RGB", (COLOUR_SIDE, COLOUR_SIDE))
    side = max(1, min(COLOUR_SIDE, *image.size))
    score = colourfulness(image.resize((side, side), Image.Resampling.BOX))
    if score > COLOURFULNESS_LIMIT:
        raise RejectedImage("not_a_radiograph", f"the image is in strong colour (colourfulness {score:.0f}, over "
                                                f"{COLOURFULNESS_LIMIT:g}): a photograph or a stained slide, "
                                                "not an X-ray")


def _band_extrema(image: Image.Image) -> tuple[tuple[int, int], ...]:
    extrema = image.getextrema()
    return extrema if len(image.getbands()) > 1 else (extrema,)


def check_geometry(width: int, height: int) -> None:
    """The pixel cap, the smallest side and the aspect limit, from a header's dimensions before decoding."""
    if width * height > MAX_PIXELS:
        raise RejectedImage(
            "too_many_pixels", f"{width}x{height} is {width * height:,} pixels, over the {MAX_PIXELS:,} cap"
        )
    if min(width, height) < MIN_SIDE:
        raise RejectedImage("too_small", f"{width}x{height} is smaller than {MIN_SIDE} px on a side")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise RejectedImage("bad_aspect", f"{width}x{height} is longer than {MAX_ASPECT:g}:1, not a chest X-ray")


def _to_grayscale(image: Image.Image) -> Image.Image:
    """Any decoded mode to 8-bit grayscale, a strip of rows at a time (bounded temporaries at any size)."""
    if image.mode == "L":
        return image
    convert = _sixteen_to_eight_bits(image) if image.mode == "I;16" else _strip_to_grayscale
    gray = Image.new("L", image.size)
    rows = max(1, _STRIP_PIXELS // image.width)
    for top in range(0, image.height, rows):
        box = (0, top, image.width, min(image.height, top + rows))
        gray.paste(convert(image.crop(box)), box[:2])
    return gray


def _strip_to_grayscale(strip: Image.Image) -> Image.Image:
    """Alpha composited on black; palette via RGB(A); CMYK, YCbCr, 1, RGB via RGB to ITU-R 601 luma."""
    if strip.mode == "P":
        strip = strip.convert("RGBA" if "transparency" in strip.info else "RGB")
    if strip.mode in ("LA", "RGBA"):
        rgba = strip.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    return strip.convert("RGB").convert("L")


def _sixteen_to_eight_bits(image: Image.Image):
    """Map the image's own value range onto 0..255 by a 65,536-entry table (a 12-bit X-ray stays visible).

    The range is measured first (Pillow's extrema, no copy); each strip is then one table lookup into
    uint8, where float64 arithmetic over the whole image took 1.5 GB for a 7700x7700 PNG.
    """
    low, high = image.getextrema()
    scale = 255.0 / (high - low) if high > low else 0.0
    table = np.round(np.clip(np.arange(65536, dtype=np.float64) - low, 0, None) * scale).clip(0, 255)
    table = table.astype(np.uint8)
    return lambda strip: Image.fromarray(table[np.asarray(strip)])


def _shrink(image: Image.Image) -> Image.Image:
    width, height = image.size
    scale = STORED_MAX_SIDE / max(width, height)
    if scale >= 1.0:
        return image
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(target, Image.Resampling.LANCZOS)


def _encode(stored: Image.Image, original: tuple[int, int, str, str]) -> NormalisedImage:
    digest = hashlib.sha256()
    digest.update(f"{stored.width}x{stored.height}:".encode())
    digest.update(stored.tobytes())
    return NormalisedImage(
        stored=stored,
        content_hash=digest.hexdigest(),
        width=stored.width,
        height=stored.height,
        original_width=original[0],
        original_height=original[1],
        original_format=original[2],
        original_mode=original[3],
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
