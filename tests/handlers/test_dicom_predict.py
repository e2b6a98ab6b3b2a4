"""DICOM through the predict Lambda: the prediction, and the DICOM SR a PACS files beside the source."""

from __future__ import annotations

import io
import json

import boto3
import highdicom
import pydicom
import pytest
from test_predict import (  # noqa: F401
    ANSWER,
    BUCKET,
    answer,
    current,
    endpoint,
    inference,
    invoke,
    prediction_key,
    read_json,
    upload,
)

import dicom_corpus
from ingested import name_of
from lambdas.domain import imaging, layout, uploads


@pytest.fixture(scope="module")
def case() -> dicom_corpus.Case:
    return next(c for c in dicom_corpus.corpus() if c.reason is None and "monochrome1" in c.name)


def structured_report(key: str) -> highdicom.sr.ComprehensiveSR:
    data = boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return highdicom.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(io.BytesIO(data)))


def content(sr) -> dict[str, object]:
    """Concept meaning -> value of each item of the report's root container."""
    values = {}
    for item in sr.ContentSequence:
        meaning = item.ConceptNameCodeSequence[0].CodeMeaning
        values[meaning] = (item.get("TextValue") or (item.MeasuredValueSequence[0].NumericValue
                                                    if "MeasuredValueSequence" in item else item))
    return values


def test_a_dicom_upload_is_predicted_and_reported_as_a_valid_sr(endpoint, lambda_context, case):  # noqa: F811
    image, source = uploads.normalise(case.data)
    answer(endpoint, png=image.wire_png)  # the endpoint receives the normalised pixels, never the DICOM
    key = f"incoming/ward 7/{case.name}"
    assert invoke(lambda_context, upload(key, case.data))["predicted"] == 1
    prediction, name = read_json(prediction_key(key)), name_of(key, BUCKET)
    assert prediction["label"] == "bacterial"
    assert prediction["dicom_sr"] == {"key": layout.structured_report_key(name)}  # identity inside, not in its key
    sr = structured_report(prediction["dicom_sr"]["key"])
    assert sr.StudyInstanceUID == source.StudyInstanceUID == dicom_corpus.STUDY_UID
    assert sr.PatientID == dicom_corpus.PATIENT_ID  # a PACS files the result by it: results-dicom/ only
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    series = evidence.ReferencedSeriesSequence[0]
    assert (evidence.StudyInstanceUID, series.SeriesInstanceUID, series.ReferencedSOPSequence[0]
            .ReferencedSOPInstanceUID) == (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)
    values = content(sr)
    assert values["Finding"] == "bacterial" and values["Algorithm Version"] == ANSWER["model_id"]
    assert float(values["Probability of bacterial"]) == pytest.approx(0.71)
    assert float(values["Probability of pneumonia"]) == pytest.approx(0.8)
    assert values["Refer to radiologist"] == "no"
    assert values["Source of Measurement"].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sr.SOPInstanceUID != source.SOPInstanceUID and sr.Modality == "SR"
    item = boto3.client("dynamodb").get_item(TableName="predictions", Key={
        "pk": {"S": f"{BUCKET}/{name}"}, "sk": {"S": prediction["source"]["version_id"]}})["Item"]
    assert json.loads(item["record"]["S"])["dicom_sr"] == prediction["dicom_sr"]  # the audit trail names it too
    text = json.dumps(prediction) + json.dumps(item)  # the file name carries identifiers: nothing taken out
    assert not [i for i in dicom_corpus.IDENTIFIERS if i in text]


def test_the_sr_is_off_when_configured_and_retired_with_its_prediction(endpoint, lambda_context, case,  # noqa: F811
                                                                       monkeypatch):
    key = f"incoming/{case.name}"
    answer(endpoint)
    invoke(lambda_context, upload(key, case.data))
    assert current("results-dicom/") == [layout.structured_report_key(name_of(key, BUCKET))]
    invoke(lambda_context, upload(key, b"not an image any more"))  # its current version is rejected now
    assert current("results-dicom/") == []
    monkeypatch.setenv("DICOM_SR_OUTPUT", "false")
    answer(endpoint, png=imaging.normalise(dicom_corpus.SOURCE.read_bytes()).wire_png)
    answer(endpoint)
    assert invoke(lambda_context, upload("incoming/plain.jpeg", dicom_corpus.SOURCE.read_bytes()),
                  upload(f"incoming/again-{case.name}", case.data))["predicted"] == 2
    assert current("results-dicom/") == []
    assert "dicom_sr" not in read_json(prediction_key(f"incoming/again-{case.name}"))
