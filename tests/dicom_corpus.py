"""A DICOM corpus made from the sample X-rays: every accepted transfer syntax, the display pipeline's
cases and the rejections, each file carrying fake identifiers in the PHI attributes of PS3.15 Annex E
and in its name.

Encoders: pydicom (native, deflated, RLE), pylibjpeg-openjpeg (JPEG 2000), pyjpegls (JPEG-LS),
Pillow (JPEG Baseline, encapsulated here), GDCM (JPEG Lossless, which nothing else here encodes).
"""

from __future__ import annotations

import io
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import write_file_meta_info

SOURCE = Path("samples/kermany-val16/NORMAL/NORMAL2-IM-1427-0001.jpeg")
SIDE = 384
"""The corpus's longest side: small enough to write two dozen files in a second, still over the stored 256."""

STUDY_UID = "1.2.826.0.1.3680043.8.498.7770001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.7770002"
FRAME_UID = "1.2.826.0.1.3680043.8.498.7770004"
PATIENT_ID = "FAKEPID-7731"
PHI = {  # Annex E, Table E.1-1 attributes a CR/DX file may carry, each with a fake value found nowhere else
    "PatientName": "Fakename^Zelda",
    "PatientID": PATIENT_ID,
    "IssuerOfPatientID": "FAKEISSUER-HOSP",
    "OtherPatientNames": "Aliasfake^Ada",
    "PatientBirthName": "Birthfake^Bea",
    "PatientMotherBirthName": "Maidenfake^Mabel",
    "PatientBirthDate": "19330405",
    "PatientBirthTime": "031415",
    "PatientAddress": "12 Fakestreet Fakeville",
    "PatientTelephoneNumbers": "5550199777",
    "MilitaryRank": "FAKERANK",
    "EthnicGroup": "FAKEETHNIC",
    "Occupation": "FAKEJOBTITLE",
    "AdditionalPatientHistory": "fake history mentioning Zelda",
    "PatientComments": "fake comment mentioning Zelda",
    "MedicalRecordLocator": "FAKEMRL-881",
    "ReferringPhysicianName": "Quackfake^Doctor",
    "PerformingPhysicianName": "Performfake^Pat",
    "NameOfPhysiciansReadingStudy": "Readerfake^Rita",
    "OperatorsName": "Operatorfake^Ozzie",
    "PhysiciansOfRecord": "Recordfake^Rex",
    "RequestingPhysician": "Requestfake^Rob",
    "InstitutionName": "Fakeville General Hospital",
    "InstitutionAddress": "1 Fake Plaza Fakeville",
    "InstitutionalDepartmentName": "Fakedept Radiology",
    "StationName": "FAKESTN01",
    "DeviceSerialNumber": "FAKESERIAL77",
    "AccessionNumber": "FAKEACC0042",
    "StudyID": "FAKESTUDY9",
    "StudyDescription": "Fakestudy chest of Zelda",
    "SeriesDescription": "Fakeseries of Zelda",
    "ProtocolName": "Fakeprotocol Zelda",
    "ImageComments": "Fakeimage comment Zelda",
    "RequestedProcedureDescription": "Fakeprocedure for Zelda",
    "PerformedProcedureStepID": "FAKEPPS1",
    "PerformedProcedureStepDescription": "Fakestep for Zelda",
    "StudyDate": "20240117",
    "SeriesDate": "20240118",
    "AcquisitionDate": "20240119",
    "ContentDate": "20240120",
    "StudyTime": "101112",
    "StudyInstanceUID": STUDY_UID,
    "SeriesInstanceUID": SERIES_UID,
    "FrameOfReferenceUID": FRAME_UID,
}
PRIVATE_CREATOR, PRIVATE_VALUE = "FAKEPRIVCREATOR", "FAKE-PRIVATE-ZELDA"
IDENTIFIERS = sorted({v for v in PHI.values() if len(v) >= 6} | {PRIVATE_CREATOR, PRIVATE_VALUE, "Zelda",
                                                                  "1.2.826.0.1.3680043.8.498.777"})
"""Byte strings that must appear nowhere outside ``raw/``, ``incoming/`` and ``results-dicom/`` (the UID
root covers every instance UID of the corpus)."""
FILE_NAME_IDENTIFIER = "Zelda-Fakename"
"""Put in every file name of the corpus."""


@dataclass
class Case:
    """One corpus file: its bytes, what ingest must say (``None``: accepted), and the expected grey levels."""

    name: str
    data: bytes
    reason: str | None = None
    expected: np.ndarray | None = field(default=None, repr=False)
    """The 8-bit image the DICOM display pipeline must give, at the file's own size (accepted cases)."""


def source_grey(path: Path = SOURCE, side: int = SIDE) -> np.ndarray:
    """The sample JPEG as 8-bit grey, longest side ``side``."""
    image = Image.open(path).convert("L")
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return np.asarray(image)


def dataset(pixels: np.ndarray, *, bits_stored: int | None = None, number: int = 1, modality: str = "DX",
            photometric: str = "MONOCHROME2", **attributes) -> Dataset:
    """A DX image IOD data set with every fake identifier, the pixels stored as given."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.7770003.{number}"
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", PRIVATE_VALUE)
    ds.Modality, ds.PatientAge, ds.PatientSex = modality, "045Y", "F"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.ImagerPixelSpacing = [0.139, 0.139]
    ds.InstanceNumber = number
    bits = bits_stored or (8 if pixels.dtype == np.uint8 else 16)
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def to_bytes(ds: Dataset, syntax: str = uid.ExplicitVRLittleEndian, preamble: bool = True) -> bytes:
    """The data set written in ``syntax`` (compressing its pixel data first where that is a compressed one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if syntax == uid.JPEGBaseline8Bit:
            grey = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns)
            buffer = io.BytesIO()
            Image.fromarray(grey).save(buffer, format="JPEG", quality=95)
            ds.PixelData = encapsulate([buffer.getvalue()])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = syntax
        elif syntax in GDCM_SYNTAXES:
            return _gdcm_transcode(ds, syntax)
        elif syntax in (uid.JPEGLSLossless, uid.JPEGLSNearLossless):
            ds.compress(syntax, encoding_plugin="pyjpegls", **({"jls_error": 2} if syntax == uid.JPEGLSNearLossless
                                                                 else {}))
        elif syntax in (uid.JPEG2000Lossless, uid.JPEG2000):
            ds.compress(syntax, encoding_plugin="pylibjpeg",
                        **({"j2k_psnr": [80]} if syntax == uid.JPEG2000 else {}))
        elif syntax == uid.RLELossless:
            ds.compress(syntax, encoding_plugin="pydicom")
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True, implicit_vr=syntax == uid.ImplicitVRLittleEndian)
    data = buffer.getvalue()
    return data if preamble else data[132:]


GDCM_SYNTAXES = {uid.JPEGLossless: "JPEGLosslessProcess14", uid.JPEGLosslessSV1: "JPEGLosslessProcess14_1"}


def _gdcm_transcode(ds: Dataset, syntax: str) -> bytes:
    import gdcm  # noqa: PLC0415 (test-only encoder)

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder, "in.dcm"), Path(folder, "out.dcm")
        source.write_bytes(to_bytes(ds))
        reader = gdcm.ImageReader()
        reader.SetFileName(str(source))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, GDCM_SYNTAXES[syntax])))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(target))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write()
        data = target.read_bytes()
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == syntax, "GDCM wrote another syntax"
    return data


def twelve_bit(grey: np.ndarray) -> np.ndarray:
    return np.rint(grey.astype(np.float64) * 4095 / 255).astype(np.uint16)


def corpus() -> list[Case]:
    """Every file the tests feed to ingest, ``cxr check`` and the predict function."""
    grey = source_grey()
    g12 = twelve_bit(grey)
    cases: list[Case] = []

    def add(label: str, data: bytes, reason: str | None = None, expected: np.ndarray | None = None) -> None:
        cases.append(Case(f"{FILE_NAME_IDENTIFIER}-{PATIENT_ID}-{len(cases):02d}-{label}.dcm", data, reason, expected))

    for syntax in (uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
                   uid.JPEGBaseline8Bit, uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGLSLossless,
                   uid.JPEG2000Lossless, uid.RLELossless):
        add(uid.UID(syntax).keyword, to_bytes(dataset(grey, number=len(cases) + 1), syntax), expected=grey)
    for syntax in (uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless,
                   uid.JPEG2000, uid.RLELossless):
        add(f"12bit-{uid.UID(syntax).keyword}", to_bytes(dataset(g12, bits_stored=12, number=len(cases) + 1), syntax),
            expected=grey)
    noisy = g12 | (np.uint16(0xA000) * (np.arange(g12.size).reshape(g12.shape) % 2).astype(np.uint16))
    add("12bit-overlay-bits-set", to_bytes(dataset(noisy, bits_stored=12, number=len(cases) + 1)), expected=grey)
    sixteen = (grey.astype(np.uint16) * 257).astype(np.uint16)
    add("16bit", to_bytes(dataset(sixteen, number=len(cases) + 1)), expected=grey)
    add("monochrome1", to_bytes(dataset(4095 - g12, bits_stored=12, photometric="MONOCHROME1",
                                        number=len(cases) + 1), uid.JPEGLSLossless), expected=grey)
    # rescale: stored s is displayed as 2 s - 1024, then a window centred on 1976, 4001 wide, clips both ends
    rescaled = dataset(g12, bits_stored=12, number=len(cases) + 1, RescaleSlope=2, RescaleIntercept=-1024,
                       WindowCenter=1976, WindowWidth=4001)
    shown = np.clip((2 * g12.astype(np.float64) - 1024 - (1976 - 0.5)) / 4000 + 0.5, 0, 1)
    add("rescale-window", to_bytes(rescaled, uid.RLELossless), expected=np.rint(shown * 255).astype(np.uint8))
    sigmoid = dataset(g12, bits_stored=12, number=len(cases) + 1, WindowCenter=2048, WindowWidth=2048,
                      VOILUTFunction="SIGMOID")
    curve = 1 / (1 + np.exp(-4 * (g12.astype(np.float64) - 2048) / 2048))
    add("window-sigmoid", to_bytes(sigmoid, uid.JPEG2000Lossless), expected=np.rint(curve * 255).astype(np.uint8))
    gamma = np.rint(65535 * (np.arange(4096) / 4095) ** 0.5).astype(np.uint16)
    with_lut = dataset(g12, bits_stored=12, number=len(cases) + 1)
    item = Dataset()
    item.LUTDescriptor, item.LUTData = [4096, 0, 16], gamma.tolist()
    item["LUTData"].VR = "US"
    with_lut.VOILUTSequence = [item]
    add("voi-lut", to_bytes(with_lut), expected=np.rint(gamma[g12] / 257).astype(np.uint8))
    add("no-preamble", to_bytes(dataset(grey, number=len(cases) + 1), preamble=False), expected=grey)
    add("empty-body-part-and-view", to_bytes(dataset(grey, number=len(cases) + 1, BodyPartExamined="",
                                                     ViewPosition="")), expected=grey)
    add("age-93", to_bytes(dataset(grey, number=len(cases) + 1, PatientAge="093Y")), expected=grey)
    add("lateral", to_bytes(dataset(grey, number=len(cases) + 1, ViewPosition="LL")), "dicom_lateral")
    add("ct-slice", to_bytes(dataset(g12, bits_stored=12, modality="CT", number=len(cases) + 1)), "dicom_modality")
    add("abdomen", to_bytes(dataset(grey, number=len(cases) + 1, BodyPartExamined="ABDOMEN")), "dicom_body_part")
    two = np.stack([grey, grey])
    add("multiframe", to_bytes(dataset(two, number=len(cases) + 1, NumberOfFrames=2)), "dicom_multiframe")
    add("burned-in", to_bytes(dataset(grey, number=len(cases) + 1, BurnedInAnnotation="YES")), "dicom_burned_in")
    no_pixels = dataset(grey, number=len(cases) + 1)
    del no_pixels.PixelData
    add("no-pixel-data", to_bytes(no_pixels), "dicom_no_pixels")
    whole = to_bytes(dataset(grey, number=len(cases) + 1))
    add("truncated", whole[: len(whole) * 2 // 3], "truncated")
    add("deflate-bomb", deflate_bomb(dataset(grey, number=len(cases) + 1)), "too_many_pixels")
    return cases


def deflate_bomb(ds: Dataset, zeros: int = 200 * 2**20) -> bytes:
    """A deflated file whose data set inflates past 200 MiB (a private element of zeros after the pixels)."""
    plain = to_bytes(ds)  # explicit VR little endian: the meta (its length in its first element), then the data set
    meta_end = 132 + 12 + int.from_bytes(plain[140:144], "little")
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    head = io.BytesIO()
    head.write(bytes(128) + b"DICM")
    write_file_meta_info(head, ds.file_meta, enforce_standard=True)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(plain[meta_end:]),
             deflater.compress(b"\xe1\x7f\x10\x00OB\x00\x00" + zeros.to_bytes(4, "little"))]
    block = bytes(2**20)
    parts += [deflater.compress(block) for _ in range(zeros // len(block))]
    return head.getvalue() + b"".join(parts) + deflater.flush()
