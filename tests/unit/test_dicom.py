"""DICOM decoding: every transfer syntax, the display pipeline, the acceptance rules, reference files."""

from __future__ import annotations

import functools
import io
import json
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

import corpus
import dicom_corpus
from lambdas.domain import dicom, imaging, uploads


@functools.cache
def cases() -> dict[str, dicom_corpus.Case]:
    return {case.name: case for case in dicom_corpus.corpus()}


def stored(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def expected_stored(grey: np.ndarray) -> np.ndarray:
    """What the normaliser stores for an 8-bit image of these grey levels."""
    return stored(imaging.normalise_decoded(Image.fromarray(grey), grey.shape[1], grey.shape[0], "-", "-").png)


ACCEPTED = sorted(name for name, case in cases().items() if case.reason is None)
REJECTED = sorted(name for name, case in cases().items() if case.reason is not None)


@pytest.mark.parametrize("name", ACCEPTED)
def test_each_accepted_file_gives_the_grey_levels_its_header_describes(name):
    case = cases()[name]
    image, dataset = uploads.normalise(case.data)
    difference = np.abs(stored(image.png).astype(int) - expected_stored(case.expected))
    lossy = dataset.file_meta.TransferSyntaxUID in (pydicom.uid.JPEGBaseline8Bit, pydicom.uid.JPEG2000,
                                                    pydicom.uid.JPEGLSNearLossless)
    assert difference.mean() <= (1.0 if lossy else 0.01) and difference.max() <= (4 if lossy else 1), name
    assert image.original_format == "DICOM" and max(image.width, image.height) == imaging.STORED_MAX_SIDE


@pytest.mark.parametrize("name", REJECTED)
def test_each_rejected_file_names_its_reason(name):
    case = cases()[name]
    with pytest.raises(imaging.RejectedImage) as caught:
        uploads.normalise(case.data)
    assert caught.value.code == case.reason, caught.value.message


def test_the_corpus_covers_every_accepted_transfer_syntax_and_every_rejection():
    syntaxes = {dicom.read(case.data).file_meta.TransferSyntaxUID for case in cases().values()
                if case.reason is None}
    assert syntaxes == set(dicom.TRANSFER_SYNTAXES)
    assert {case.reason for case in cases().values()} >= {
        None, "dicom_lateral", "dicom_modality", "dicom_body_part", "dicom_multiframe", "dicom_burned_in",
        "dicom_no_pixels", "truncated"}


def test_a_dicom_x_ray_matches_the_jpeg_it_was_made_from():
    """The whole path against the JPEG path: the sample at 384 px as DICOM, the sample itself as JPEG."""
    jpeg = imaging.normalise(dicom_corpus.SOURCE.read_bytes())
    for name in ACCEPTED:
        if "ExplicitVR" in name or "12bit-JPEG2000Lossless" in name or "monochrome1" in name:
            image, _ = uploads.normalise(cases()[name].data)
            assert (image.width, image.height) == (jpeg.width, jpeg.height)
            difference = np.abs(stored(image.png).astype(int) - stored(jpeg.png))
            assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 6, name


def test_twelve_bits_are_not_clipped_and_unused_high_bits_are_ignored():
    image, dataset = uploads.normalise(cases()[next(n for n in ACCEPTED if "overlay-bits" in n)].data)
    assert dataset.BitsStored == 12 and stored(image.png).max() > 200  # not all white, not all black


def test_the_bare_data_set_and_the_part_10_file_are_both_recognised():
    assert all(uploads.is_dicom(case.data) for case in cases().values())
    for other in (corpus.jpeg(), corpus.png(), b"patient notes\n" * 8, corpus.minimal_pdf(), b""):
        assert not uploads.is_dicom(other)


def test_the_endpoints_normaliser_still_names_dicom_it_cannot_read():
    """The endpoint's copy of imaging.py has no pydicom: the predict function decodes DICOM before it."""
    with pytest.raises(imaging.RejectedImage) as caught:
        imaging.normalise(cases()[ACCEPTED[0]].data)
    assert caught.value.code == "dicom_unsupported"


def reference(name: str) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(get_testdata_file(name))


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_implicit.dcm"])
def test_reference_files_of_other_encoders_decode_to_their_uncompressed_pixels(name):
    """pydicom-data's files, written by other toolkits, through the plugins the bundle carries."""
    assert np.array_equal(dicom._decoded_pixels(reference(name)), reference("MR_small.dcm").pixel_array)


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEGLSNearLossless_16.dcm",
                                  "image_dfl.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_reference_files_in_each_compressed_syntax_decode(name):
    pixels = dicom._decoded_pixels(reference(name)) if "rgb" not in name else None
    assert pixels is None or (pixels.ndim == 2 and pixels.max() > pixels.min())


def test_a_real_monochrome1_computed_radiograph_is_read():
    """RG1_J2KR.dcm: a CR in MONOCHROME1, 15 bits stored, JPEG 2000 lossless (pydicom-data)."""
    ds = reference("RG1_J2KR.dcm")
    grey = dicom.grey_levels(ds)
    assert grey.shape == (ds.Rows, ds.Columns) and grey.dtype == np.uint8 and grey.std() > 20
    raw = dicom._decoded_pixels(ds).astype(float)
    assert np.corrcoef(raw.ravel()[::97], grey.ravel()[::97].astype(float))[0, 1] < -0.9  # inverted


@pytest.mark.parametrize(("name", "code"), [("JPEG-lossy.dcm", "dicom_modality"), ("CT_small.dcm", "dicom_modality")])
def test_reference_files_of_other_modalities_are_refused(name, code):
    with pytest.raises(imaging.RejectedImage) as caught:
        uploads.normalise(open(get_testdata_file(name), "rb").read())
    assert caught.value.code == code


def test_jpeg_extended_12_bit_is_refused_by_name():
    ds = reference("JPGExtended.dcm")
    ds.Modality, ds.NumberOfFrames, ds.BodyPartExamined = "CR", 1, "CHEST"
    with pytest.raises(imaging.RejectedImage) as caught:
        dicom.check_acceptable(ds)
    assert caught.value.code == "dicom_transfer_syntax" and "JPEG 2000" in caught.value.message


def test_pixel_geometry_is_checked_from_the_header_before_decoding():
    ds = dicom.read(cases()[ACCEPTED[0]].data)
    ds.Rows = ds.Columns = 60_000
    with pytest.raises(imaging.RejectedImage) as caught:
        dicom.check_acceptable(ds)
    assert caught.value.code == "too_many_pixels"


def test_a_malformed_value_is_neither_a_crash_nor_a_log_line(capfd, caplog):
    """pydicom quotes a bad value in its warning and log record; in a Lambda both would reach CloudWatch."""
    from lambdas.domain import deid

    ds = dicom_corpus.dataset(dicom_corpus.source_grey(), PatientAge="Zelda")  # not an age string (AS)
    data = dicom_corpus.to_bytes(ds).replace(b"0.139\\0.139", b"0.1x9\\Zelda")
    with caplog.at_level("DEBUG"):
        image, dataset = uploads.normalise(data)
        facts = deid.facts(dataset, bytes(32))
    assert facts["pixel_spacing_mm"] is None and facts["age_years"] == "90+"  # from the birth and study dates
    captured = capfd.readouterr()
    assert "Zelda" not in captured.out + captured.err + caplog.text + json.dumps(facts)
