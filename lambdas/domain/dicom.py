"""DICOM X-rays in: decode with pydicom and GDCM, accept single-frame chest CR/DX, then the one normaliser.

Plugins, chosen by coverage, size and licence (``bench/dicom_plugins.py`` measures them): GDCM
(``python-gdcm``, Apache-2.0) is the one decoder with a wheel for the Lambda runtime that reads JPEG
Lossless (pylibjpeg-libjpeg is GPL-3.0, excluded) and JPEG-LS (``pyjpegls`` has no CPython 3.14
wheel), and it reads JPEG Baseline and JPEG 2000 too, so ``pylibjpeg-openjpeg`` would add nothing
but size. RLE, uncompressed and deflated data need no plugin (pydicom's own decoder, zlib).

The grey levels follow the DICOM display pipeline (PS3.3 C.11 and C.7.6.3.1.2): stored values
masked to BitsStored by pydicom, the Modality LUT (rescale slope/intercept or a LUT sequence),
the VOI LUT or the first window centre/width (LINEAR, LINEAR_EXACT or SIGMOID), MONOCHROME1
inverted; without a VOI transform the image's own value range maps onto 0..255, as a 16-bit PNG's
does in :mod:`lambdas.domain.imaging`. The 8-bit result then goes through
:func:`imaging.normalise_decoded`, the same stored-form contract as a JPEG or PNG.

Nothing here writes anything: the de-identified facts a sidecar may carry come from
:mod:`lambdas.domain.deid`.
"""

from __future__ import annotations

import io
import logging
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom import config, uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.pixels import apply_modality_lut, apply_voi, pixel_array

from lambdas.domain import imaging
from lambdas.domain.imaging import NormalisedImage, RejectedImage

config.settings.reading_validation_mode = config.IGNORE
logging.getLogger("pydicom").propagate = False
"""pydicom warns, and logs, about a malformed value by quoting it ("Invalid value for VR PN: '<name>'"): in a
Lambda, warnings and the root logger go to CloudWatch, so a value would leave raw/ in a log line. The rules
here judge values themselves; pydicom's own logger keeps its null handler and stops there."""

TRANSFER_SYNTAXES = {
    uid.ExplicitVRLittleEndian: "Explicit VR Little Endian",
    uid.ImplicitVRLittleEndian: "Implicit VR Little Endian",
    uid.DeflatedExplicitVRLittleEndian: "Deflated Explicit VR Little Endian",
    uid.JPEGBaseline8Bit: "JPEG Baseline (8-bit)",
    uid.JPEGLossless: "JPEG Lossless (Process 14)",
    uid.JPEGLosslessSV1: "JPEG Lossless (Process 14, SV1)",
    uid.JPEGLSLossless: "JPEG-LS Lossless",
    uid.JPEGLSNearLossless: "JPEG-LS Near-Lossless",
    uid.JPEG2000Lossless: "JPEG 2000 (lossless only)",
    uid.JPEG2000: "JPEG 2000",
    uid.RLELossless: "RLE Lossless",
}
"""Every transfer syntax accepted (the README's input table lists them), and its name for people.

Not JPEG Extended (12-bit): pydicom refuses GDCM for it (GDCM decodes 12-bit lossy JPEG wrongly), and
the only other decoder, pylibjpeg-libjpeg, is GPL-3.0."""
NATIVE_SYNTAXES = frozenset({uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian,
                             uid.DeflatedExplicitVRLittleEndian})
DECODING_PLUGINS = {uid.RLELossless: "pydicom"}
"""pydicom's plugin by syntax, so the same decoder runs wherever this does (a developer's extra plugins are
not asked): GDCM for every compressed syntax but RLE, which pydicom decodes itself (numpy)."""
DEFAULT_PLUGIN = "gdcm"
MODALITIES = ("CR", "DX")
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX"})
"""BodyPartExamined values taken as a chest (PS3.16 Annex L's code meanings); empty is accepted as unknown."""
FRONTAL_VIEWS = frozenset({"PA", "AP"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT"})
UNKNOWN = "unknown"
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
INFLATED_MAX_BYTES = 2 * imaging.MAX_PIXELS + 16 * 2**20
"""Most a deflated data set may inflate to: the pixel cap at 16 bits plus 16 MiB of attributes. Deflate can
grow 1032-fold, so a 30 MiB upload could otherwise make pydicom allocate 30 GB before any check runs."""
_INFLATE_CHUNK = 1 << 20


@dataclass(frozen=True)
class DicomImage:
    """An accepted DICOM X-ray: its stored form and the parsed data set (identifiers included: keep it inside)."""

    image: NormalisedImage
    dataset: Dataset


def read(data: bytes) -> Dataset:
    """Parse a file (with or without preamble) into a data set; the pixel data is not decoded yet."""
    _check_inflated_size(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every odd value; the rules below decide
            dataset = pydicom.dcmread(io.BytesIO(data), force=True)
            dataset.get("PixelData")  # deferred values are read here, where a cut-off one fails
    except EOFError as exc:
        raise RejectedImage("truncated", f"the DICOM file ends inside a data element ({imaging._short(exc)}): "
                                         "the file was cut short (re-export or re-upload it whole)") from None
    except (InvalidDicomError, ValueError, TypeError, KeyError, IndexError, OverflowError, NotImplementedError,
            AttributeError, RecursionError) as exc:
        raise RejectedImage("corrupt", f"the DICOM data set cannot be parsed ({imaging._short(exc)})") from None
    meta = dataset.get("file_meta") or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:  # a bare data set: the syntax pydicom found while reading it
        meta.TransferSyntaxUID = uid.ImplicitVRLittleEndian if dataset.original_encoding[0] else \
            uid.ExplicitVRLittleEndian
        dataset.file_meta = meta
    return dataset


def _check_inflated_size(data: bytes) -> None:
    """Inflate a deflated data set a megabyte at a time, counting, before pydicom inflates it whole."""
    stream = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_preamble(stream, force=True)
            meta = _read_file_meta_info(stream)  # pydicom's own reader of group 0002, which dcmread uses too
    except Exception:  # noqa: BLE001 (no readable file meta: dcmread names the problem)
        return
    if meta.get("TransferSyntaxUID") != uid.DeflatedExplicitVRLittleEndian:
        return
    inflater, pending, total = zlib.decompressobj(-zlib.MAX_WBITS), data[stream.tell():], 0
    try:
        while pending and not inflater.eof:
            total += len(inflater.decompress(pending, _INFLATE_CHUNK))
            pending = inflater.unconsumed_tail
            if total > INFLATED_MAX_BYTES:
                raise RejectedImage("too_many_pixels", f"the deflated data set inflates to over "
                                                       f"{INFLATED_MAX_BYTES / 2**20:.0f} MiB (a decompression bomb)")
    except zlib.error as exc:
        raise RejectedImage("corrupt", f"the deflated data set cannot be inflated ({exc})") from None


def check_acceptable(dataset: Dataset) -> None:
    """The rules of a DICOM X-ray this project reads, each rejection with its own code, all from the header."""
    modality = str(dataset.get("Modality", "")).strip().upper()
    if modality not in MODALITIES:
        raise RejectedImage("dicom_modality", f"modality {modality or 'missing'!r} is not a radiograph: only "
                                              f"{' and '.join(MODALITIES)} images are read")
    body_part = str(dataset.get("BodyPartExamined", "")).strip().upper()
    if body_part and body_part not in CHEST_BODY_PARTS:
        raise RejectedImage("dicom_body_part", f"body part examined is {body_part!r}, not the chest")
    view = str(dataset.get("ViewPosition", "")).strip().upper()
    if view in LATERAL_VIEWS:
        raise RejectedImage("dicom_lateral", f"view position {view!r} is a lateral view: the model reads "
                                             "frontal (PA or AP) chest X-rays")
    if view and view not in FRONTAL_VIEWS:
        raise RejectedImage("dicom_view", f"view position {view!r} is not frontal (PA or AP)")
    frames = _integer(dataset.get("NumberOfFrames", 1), 1)
    if frames > 1:
        raise RejectedImage("dicom_multiframe", f"{frames} frames: one X-ray per file is read")
    if str(dataset.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        raise RejectedImage("dicom_burned_in", "Burned In Annotation is YES: text in the pixels may identify the "
                                               "patient, and no pixel is de-identified here")
    if "PixelData" not in dataset:
        raise RejectedImage("dicom_no_pixels", "the data set holds no pixel data")
    syntax = dataset.file_meta.TransferSyntaxUID
    if syntax not in TRANSFER_SYNTAXES:
        raise RejectedImage("dicom_transfer_syntax", f"transfer syntax {syntax} ({syntax.name}) is not read here; "
                                                     f"read: {', '.join(TRANSFER_SYNTAXES.values())}")
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in MONOCHROME or _integer(dataset.get("SamplesPerPixel", 1), 1) != 1:
        raise RejectedImage("dicom_photometric", f"photometric interpretation {photometric or 'missing'!r}: a "
                                                 "radiograph is MONOCHROME1 or MONOCHROME2, one sample a pixel")
    imaging.check_geometry(_integer(dataset.get("Columns"), 0), _integer(dataset.get("Rows"), 0))


def displayed(data: bytes) -> tuple[Image.Image, Dataset]:
    """Validate untrusted DICOM bytes; the grey levels a viewer shows, at full size, with the data set."""
    imaging.check_upload_size(len(data))
    dataset = read(data)
    try:
        check_acceptable(dataset)
        return Image.fromarray(grey_levels(dataset)), dataset
    except RejectedImage:
        raise
    except Exception as exc:  # a malformed value met while reading it: a bad file, never a retry of the event
        raise RejectedImage("corrupt", f"the DICOM data set has a malformed value ({type(exc).__name__}; the "
                                       "value itself is not repeated here)") from None


def decode(data: bytes) -> DicomImage:
    """Validate untrusted DICOM bytes and return the stored form, or raise :class:`RejectedImage`."""
    grey, dataset = displayed(data)
    mode = f"{dataset.PhotometricInterpretation} {dataset.get('BitsStored', dataset.get('BitsAllocated'))}-bit"
    image = imaging.normalise_decoded(grey, grey.width, grey.height, "DICOM", mode)
    return DicomImage(image, dataset)


def grey_levels(dataset: Dataset) -> np.ndarray:
    """The displayed grey levels as ``uint8``: Modality LUT, VOI LUT or window, MONOCHROME1 inverted.

    One float32 copy of the image, transformed in place: at the 60 MP cap the peak stays near the
    decoded image plus 4 bytes a pixel (``bench/dicom_memory.py``).
    """
    stored = _decoded_pixels(dataset)
    if dataset.get("ModalityLUTSequence"):
        values = apply_modality_lut(stored, dataset).astype(np.float32)
    else:
        values = stored.astype(np.float32)
        slope, intercept = _first(dataset.get("RescaleSlope")), _first(dataset.get("RescaleIntercept"))
        if slope is not None and slope != 1.0:
            values *= slope
        if intercept:
            values += intercept
    del stored
    unit = _voi(values, dataset)  # 0 (darkest) .. 1 (brightest) as MONOCHROME2, in place where it can be
    if str(dataset.PhotometricInterpretation).strip().upper() == "MONOCHROME1":
        np.subtract(1.0, unit, out=unit)
    unit *= 255.0
    np.rint(unit, out=unit)
    return unit.astype(np.uint8)


def _decoded_pixels(dataset: Dataset) -> np.ndarray:
    syntax = dataset.file_meta.TransferSyntaxUID
    options = {} if syntax in NATIVE_SYNTAXES else {"decoding_plugin": DECODING_PLUGINS.get(syntax, DEFAULT_PLUGIN)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = pixel_array(dataset, **options)
    except Exception as exc:  # every plugin raises its own types; each is a bad file, never a retry
        text = str(exc).lower()
        if any(word in text for word in ("length", "truncat", "end of", "not enough", "too short", "less than")):
            raise RejectedImage("truncated", f"the DICOM pixel data is shorter than its header declares "
                                             f"({imaging._short(exc)}): the file was cut short") from None
        raise RejectedImage("corrupt", f"the {syntax.name} pixel data cannot be decoded "
                                       f"({imaging._short(exc)})") from None
    if pixels.ndim != 2:
        raise RejectedImage("dicom_photometric", f"decoded pixel array of shape {pixels.shape}, not one grey image")
    return pixels


def _voi(values: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Values of interest onto [0, 1]: the VOI LUT, else the first window (PS3.3 C.11.2.1.2), else own range."""
    if dataset.get("VOILUTSequence"):
        descriptor = dataset.VOILUTSequence[0].LUTDescriptor
        bits = int(descriptor[2]) if 8 <= int(descriptor[2]) <= 16 else 16
        shown = apply_voi(np.rint(values).astype(np.int32), dataset)  # a LUT is indexed by integers
        return np.clip(shown.astype(np.float32) / float(2**bits - 1), 0.0, 1.0)
    centre, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
    if centre is not None and width is not None and width > 0:
        function = str(dataset.get("VOILUTFunction", "LINEAR")).strip().upper()
        if function == "SIGMOID":  # 1 / (1 + exp(-4 (x - c) / w))
            values -= centre
            values *= -4.0 / width
            np.exp(values, out=values)
            values += 1.0
            return np.reciprocal(values, out=values)
        if function == "LINEAR_EXACT":  # (x - c) / w + 0.5, clipped
            offset, scale = centre - 0.5 * width, width
        else:  # LINEAR: (x - (c - 0.5)) / (w - 1) + 0.5, clipped
            offset, scale = centre - 0.5 - 0.5 * max(width - 1.0, 1.0), max(width - 1.0, 1.0)
        values -= offset
        values /= scale
        return np.clip(values, 0.0, 1.0, out=values)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    values -= low
    values /= high - low
    return values


def _first(value) -> float | None:
    """A window value: the first of a multi-valued element, None when absent or not a number."""
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _integer(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
