"""A prediction as a DICOM Comprehensive SR that a PACS files beside the X-ray it reads.

Built with pydicom (highdicom, which the tests validate it with, needs ``pyjpegls``, which has no wheel
for the Lambda runtime). The SR carries the source's patient and study identity (a PACS files a
result by them), so it is written only under ``results-dicom/``, which has its own narrower read
permission; nothing else made from a DICOM file carries identity. Its series and instance UIDs
derive from the source instance and the model, so a re-delivered event writes the same document.

Content (PS3.3 C.17, value types of PS3.3 Table C.17.3-7): a "Diagnostic Imaging Report" container
holding the label (a finding), each class probability, the calibrated confidence and the pneumonia
probability (numbers without units), the referral and its reasons, the algorithm's name and version
(the model id) and an image reference to the source instance, which the evidence sequence names too.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime

from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

ALGORITHM_NAME = "cxr-serverless"
SERIES_NUMBER = 9017
PRIVATE_SCHEME = "99CXR"
"""This project's own coding scheme for concepts no standard code names (PS3.16 8.2: a "99" prefix)."""
_IDENTITY = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
             "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
"""What a PACS matches a result on: the Patient and General Study modules, copied from the source."""


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


FINDING = _code("121071", "DCM", "Finding")
REPORT = _code("18748-4", "LN", "Diagnostic Imaging Report")
ALGORITHM = _code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = _code("111003", "DCM", "Algorithm Version")
SOURCE_IMAGE = _code("121112", "DCM", "Source of Measurement")
NO_UNITS = _code("1", "UCUM", "no units")


def _item(relationship: str, value_type: str, concept: Dataset, **values) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = relationship, value_type
    item.ConceptNameCodeSequence = Sequence([concept])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _text(concept: Dataset, text: str) -> Dataset:
    return _item("CONTAINS", "TEXT", concept, TextValue=text[:1024])


def _number(concept: Dataset, value: float) -> Dataset:
    measured = Dataset()
    measured.NumericValue = f"{value:.6f}"[:16]
    measured.MeasurementUnitsCodeSequence = Sequence([NO_UNITS])
    return _item("CONTAINS", "NUM", concept, MeasuredValueSequence=Sequence([measured]))


def _reference(source: Dataset) -> Dataset:
    sop = Dataset()
    sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    return sop


def structured_report(source: Dataset, prediction: dict) -> Dataset:
    """The SR of one prediction (``lambdas/predict.py``'s record) about the DICOM image ``source``."""
    model = prediction["model_id"]
    entropy = [str(source.SOPInstanceUID), model]
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = uid.ComprehensiveSRStorage
    sr.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid(prefix=None, entropy_srcs=[*entropy, "instance"])
    sr.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    sr.SOPClassUID, sr.SOPInstanceUID = uid.ComprehensiveSRStorage, sr.file_meta.MediaStorageSOPInstanceUID
    for keyword in _IDENTITY:
        setattr(sr, keyword, source.get(keyword, ""))
    sr.Modality, sr.SeriesNumber, sr.InstanceNumber = "SR", SERIES_NUMBER, 1
    sr.SeriesInstanceUID = uid.generate_uid(prefix=None, entropy_srcs=[*entropy, "series"])
    sr.Manufacturer, sr.SoftwareVersions = ALGORITHM_NAME, model[:64]
    sr.SeriesDescription = "cxr-serverless prediction"
    now = datetime.now(UTC)
    sr.ContentDate, sr.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    sr.CompletionFlag, sr.VerificationFlag = "COMPLETE", "UNVERIFIED"
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence([_reference(source)])
    study = Dataset()
    study.StudyInstanceUID = source.StudyInstanceUID
    study.ReferencedSeriesSequence = Sequence([series])
    sr.CurrentRequestedProcedureEvidenceSequence = Sequence([study])
    sr.ValueType, sr.ContinuityOfContent = "CONTAINER", "SEPARATE"
    sr.ConceptNameCodeSequence = Sequence([REPORT])
    referral = "yes" if prediction["refer_to_radiologist"] else "no"
    reasons = prediction.get("referral_reasons") or []
    content = [
        _text(FINDING, prediction["label"]),
        *(_number(_code(f"p-{name}", PRIVATE_SCHEME, f"Probability of {name}"), value)
          for name, value in sorted(prediction["probabilities"].items())),
        _number(_code("confidence", PRIVATE_SCHEME, "Calibrated confidence"), prediction["confidence"]),
        *([_number(_code("p-pneumonia-any", PRIVATE_SCHEME, "Probability of pneumonia"),
                   prediction["pneumonia_probability"])] if prediction.get("pneumonia_probability") is not None
          else []),
        _text(_code("refer", PRIVATE_SCHEME, "Refer to radiologist"),
              referral + (f" ({', '.join(reasons)})" if reasons else "")),
        _text(ALGORITHM, ALGORITHM_NAME),
        _text(ALGORITHM_VERSION, model),
        _item("CONTAINS", "IMAGE", SOURCE_IMAGE, ReferencedSOPSequence=Sequence([_reference(source)])),
    ]
    sr.ContentSequence = Sequence(content)
    return sr


def to_bytes(sr: Dataset) -> bytes:
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
