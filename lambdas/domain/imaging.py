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

import hashlib
import io
import warnings
from dataclasses import dataclass

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
ALLOWED_FORMATS = ("JPEG", "PNG")
RESIZE_POLICIES = ("squash", "pad")
INTENSITY_POLICIES = ("linear", "equalize")
"""How stored grey levels reach a model: as stored, or histogram-equalised (recorded in ``model.json``)."""
ALPHA_POLICY = "composite onto black (transparent regions carry no signal, like unexposed film)"

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
    """The stored form of an accepted image and what we learnt about the original."""

    png: bytes
    content_hash: str
    width: int
    height: int
    original_width: int
    original_height: int
    original_format: str
    original_mode: str

    @property
    def image_id(self) -> str:
        """Object name stem: a re-delivered event rewrites the very same object."""
        return self.content_hash[:32]


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
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image, original = _decode(data, fmt)
    pixels = _to_grayscale_array(image)
    if int(pixels.max()) == int(pixels.min()):
        raise RejectedImage("blank", "the image has no contrast: every pixel has the same value")
    stored = _shrink(Image.fromarray(pixels))
    return _encode(stored, original)


def open_stored(png: bytes) -> Image.Image:
    """Open a stored PNG (already normalised) as an 8-bit grayscale image."""
    image = Image.open(io.BytesIO(png), formats=["PNG"])
    image.load()
    return image.convert("L") if image.mode != "L" else image


def to_model_input(image: Image.Image, size: int, policy: str, intensity: str = "linear") -> np.ndarray:
    """Resize a stored grayscale image to the model's ``size`` square, as ``float32`` in [0, 1].

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
    return np.asarray(resized, dtype=np.float32) / 255.0


def _sniff_format(data: bytes) -> str:
    head = data[:132]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[128:132] == b"DICM":
        raise RejectedImage("dicom_unsupported", "DICOM files are not supported yet: export the X-ray as PNG or JPEG")
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


def _decode(data: bytes, fmt: str) -> tuple[Image.Image, tuple[int, int, str, str]]:
    """Open with the allow-list, check the header against the caps, then decode fully."""
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = image.size
        original = (width, height, fmt, image.mode)
        _check_geometry(width, height)
        if getattr(image, "n_frames", 1) > 1:
            raise RejectedImage("animated", f"animated {fmt} with {image.n_frames} frames, not a single X-ray")
        if fmt == "PNG":
            image.verify()  # chunk CRCs: catches corruption that decoding alone can miss
            image = Image.open(io.BytesIO(data), formats=[fmt])
        elif image.mode in ("RGB", "L"):
            # DCT-domain downscaling: decodes large JPEGs at 1/2..1/8 scale, still >= 2x the stored size.
            image.draft("L", (2 * STORED_MAX_SIDE, 2 * STORED_MAX_SIDE))
        image.load()
        image = ImageOps.exif_transpose(image)
    except RejectedImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RejectedImage("too_many_pixels", f"the header declares more than {MAX_PIXELS:,} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise RejectedImage("corrupt", f"the {fmt} data is truncated or corrupt ({_short(exc)})") from None
    return image, original


def _check_geometry(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise RejectedImage(
            "too_many_pixels", f"{width}x{height} is {width * height:,} pixels, over the {MAX_PIXELS:,} cap"
        )
    if min(width, height) < MIN_SIDE:
        raise RejectedImage("too_small", f"{width}x{height} is smaller than {MIN_SIDE} px on a side")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise RejectedImage("bad_aspect", f"{width}x{height} is longer than {MAX_ASPECT:g}:1, not a chest X-ray")


def _to_grayscale_array(image: Image.Image) -> np.ndarray:
    """Any decoded mode to 8-bit grayscale: alpha composited on black, high bit depths rescaled."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba).convert("L")
    elif mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _rescale_to_uint8(np.asarray(image))
    elif mode != "L":
        image = image.convert("RGB").convert("L")  # CMYK, YCbCr, LAB, HSV, 1, RGB
    return np.asarray(image, dtype=np.uint8)


def _rescale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map the image's own value range onto 0..255 (a 12-bit X-ray in a 16-bit file stays visible)."""
    values = values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _shrink(image: Image.Image) -> Image.Image:
    width, height = image.size
    scale = STORED_MAX_SIDE / max(width, height)
    if scale >= 1.0:
        return image
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(target, Image.Resampling.LANCZOS)


def _encode(stored: Image.Image, original: tuple[int, int, str, str]) -> NormalisedImage:
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", compress_level=6)
    digest = hashlib.sha256()
    digest.update(f"{stored.width}x{stored.height}:".encode())
    digest.update(stored.tobytes())
    return NormalisedImage(
        png=buffer.getvalue(),
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
