"""De-identification of a DICOM X-ray: what a sidecar, a record or a log may carry, and nothing else.

DICOM PS3.15 Annex E's Basic Application Level Confidentiality Profile with the Retain Patient
Characteristics Option, applied as an allow-list: of the whole data set only the facts below
leave ``raw/``, so every attribute of the profile's Table E.1-1 (names, identifiers, dates, UIDs,
institution, device, free text, private tags) is removed, and so is anything the table does not
know. Kept: modality, view position, body part, age in years (90 and over top-coded as "90+", as
HIPAA's Safe Harbor method does), sex, pixel spacing (the option's patient characteristics and the
geometry a model needs); the patient id and the study, series and instance UIDs are replaced by keyed
pseudonyms (HMAC-SHA-256 with the deployment's secret), so images of one patient still group
together in splits while nobody without the secret can link a pseudonym back. The secret is never
rotated: a new one would give every patient a new pseudonym.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

AGE_TOP_CODE = 90
PSEUDONYM_PREFIX = "p-"
KEPT_KEYWORDS = ("Modality", "ViewPosition", "BodyPartExamined", "PatientAge", "PatientSex", "PixelSpacing",
                 "ImagerPixelSpacing")
"""Attributes whose values (or a coarsened form) are kept; the UIDs and PatientID become pseudonyms."""
PSEUDONYMISED_KEYWORDS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def _digest(key: bytes, kind: str, value: str) -> bytes:
    return hmac.new(key, f"{kind}:{value.strip()}".encode(), hashlib.sha256).digest()


def pseudonymous_patient_id(key: bytes, patient_id: str) -> str | None:
    """The keyed pseudonym of a PatientID (None when the file has none: the image is then its own group)."""
    return PSEUDONYM_PREFIX + _digest(key, "PatientID", patient_id).hex()[:32] if patient_id.strip() else None


def pseudonymous_uid(key: bytes, value: str) -> str | None:
    """A UID under the ``2.25`` root (PS3.5 B.2: a 128-bit integer), derived from the original by the key."""
    return "2.25." + str(int.from_bytes(_digest(key, "UID", value)[:16], "big")) if value.strip() else None


def age_years(dataset: Dataset) -> int | str | None:
    """PatientAge (``nnnY/M/W/D``), else the years between birth and study dates; "90+" from 90 on."""
    text = value(dataset, "PatientAge").upper()
    years: float | None = None
    if len(text) == 4 and text[:3].isdigit() and text[3] in _AGE_UNITS:
        years = int(text[:3]) * _AGE_UNITS[text[3]]
    else:
        born, seen = _date(value(dataset, "PatientBirthDate")), _date(value(dataset, "StudyDate"))
        if born and seen and seen >= born:
            years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    if years is None:
        return None
    return f"{AGE_TOP_CODE}+" if years >= AGE_TOP_CODE else int(years)


def facts(dataset: Dataset, key: bytes) -> dict:
    """The de-identified description of one image: the only DICOM-derived content written outside ``raw/``."""
    from lambdas.domain import dicom  # noqa: PLC0415 (pydicom only when a DICOM file arrives)

    spacing, spacing_keyword = _spacing(dataset)
    sex = value(dataset, "PatientSex").upper()
    text = {k: value(dataset, k) for k in PSEUDONYMISED_KEYWORDS}
    bits = value(dataset, "BitsStored")
    return {
        "patient_id": pseudonymous_patient_id(key, text["PatientID"]),
        "study_uid": pseudonymous_uid(key, text["StudyInstanceUID"]),
        "series_uid": pseudonymous_uid(key, text["SeriesInstanceUID"]),
        "instance_uid": pseudonymous_uid(key, text["SOPInstanceUID"]),
        "modality": value(dataset, "Modality").upper(),
        "view_position": value(dataset, "ViewPosition").upper() or dicom.UNKNOWN,
        "body_part": value(dataset, "BodyPartExamined").upper() or dicom.UNKNOWN,
        "age_years": age_years(dataset),
        "sex": sex if sex in ("M", "F", "O") else None,
        "pixel_spacing_mm": spacing,
        "pixel_spacing_source": spacing_keyword,
        "transfer_syntax": dicom.TRANSFER_SYNTAXES.get(dataset.file_meta.TransferSyntaxUID,
                                                       str(dataset.file_meta.TransferSyntaxUID)),
        "photometric": value(dataset, "PhotometricInterpretation"),
        "bits_stored": int(bits) if bits.isdigit() else None,
    }


def value(dataset: Dataset, keyword: str) -> str:
    """An attribute as stripped text, "" when absent or unreadable: a malformed value is data, never a crash
    (pydicom converts values when they are read; an exception here would make Lambda retry the event)."""
    try:
        return str(dataset.get(keyword, "") or "").strip()
    except Exception:  # noqa: BLE001 (every value class raises its own)
        return ""


def _spacing(dataset: Dataset) -> tuple[list[float] | None, str | None]:
    """Row and column spacing in mm, from PixelSpacing or else ImagerPixelSpacing, with the keyword it came from."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            values = [float(v) for v in dataset.get(keyword) or ()]
        except Exception:  # noqa: BLE001 (a malformed value: try the other attribute)
            continue
        if len(values) == 2 and all(v > 0 for v in values):
            return values, keyword
    return None, None


def removed(dataset: Dataset) -> list[dict]:
    """Every attribute of the file that no output carries (by tag; values are never shown)."""
    kept = set(KEPT_KEYWORDS) | set(PSEUDONYMISED_KEYWORDS)
    gone = []
    for element in [*(dataset.get("file_meta") or ()), *dataset]:
        if element.keyword in kept or element.tag == 0x7FE00010:
            continue
        gone.append({"tag": f"({element.tag.group:04X},{element.tag.element:04X})",
                     "keyword": element.keyword or ("private" if element.tag.is_private else "unknown"),
                     "vr": element.VR})
    return gone


def _date(value) -> dt.date | None:
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None
