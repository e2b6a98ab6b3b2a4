"""Any upload's stored form: JPEG and PNG through the normaliser, DICOM through :mod:`lambdas.domain.dicom` first.

The DICOM module (pydicom, GDCM) is imported only when a DICOM file arrives: it adds about 0.3 s to a
cold start that JPEG and PNG never need (``python -X importtime -c "import lambdas.domain.dicom"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lambdas.domain import imaging
from lambdas.domain.imaging import NormalisedImage

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def is_dicom(data: bytes) -> bool:
    """A Part 10 file (``DICM`` after the 128-byte preamble) or a bare data set without preamble and prefix.

    A bare one starts with a group 0x0002 (file meta) or 0x0008 (identification) element, little
    endian, whose element number is below 0x0100: no JPEG, PNG or text starts that way.
    """
    if data[128:132] == b"DICM":
        return True
    return len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00") and data[3] == 0


def normalise(data: bytes) -> tuple[NormalisedImage, Dataset | None]:
    """The stored form of an accepted upload, with the DICOM data set when it was one (ingest, predict, check)."""
    if is_dicom(data):
        from lambdas.domain import dicom  # noqa: PLC0415 (pydicom only when a DICOM file arrives)

        decoded = dicom.decode(data)
        return decoded.image, decoded.dataset
    return imaging.normalise(data), None
