"""endpoint_mode=async with a DICOM upload: the completion writes the DICOM SR beside the prediction."""

from __future__ import annotations

import io
import json

import boto3
import highdicom
import pydicom
from handlers.test_predict import (  # noqa: F401
    ANSWER,
    BUCKET,
    current,
    endpoint,
    inference,
    invoke,
    prediction_key,
    read_json,
    upload,
)
from handlers.test_predict_async import asynchronous, complete, land, queue  # noqa: F401

import dicom_corpus
from ingested import name_of
from lambdas.domain import layout


def test_the_completion_writes_the_sr_of_the_version_it_answers(asynchronous, lambda_context):  # noqa: F811
    case = next(c for c in dicom_corpus.corpus() if c.reason is None and "RLELossless" in c.name)
    key = f"incoming/{case.name}"
    record = upload(key, case.data)
    request = queue(asynchronous, record)
    invoke(lambda_context, record)
    assert read_json(f"{layout.ASYNC_REQUESTS}{request}.json")["dicom_sr"] is True
    assert current(layout.RESULTS_DICOM) == []  # nothing before the answer
    complete(lambda_context, land(f"{layout.ASYNC_OUTPUT}{request}.out", json.dumps(ANSWER).encode()))
    prediction = read_json(prediction_key(key))
    assert prediction["dicom_sr"] == {"key": layout.structured_report_key(name_of(key, BUCKET))}
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=prediction["dicom_sr"]["key"])["Body"].read()
    sr = highdicom.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(io.BytesIO(body)))
    assert sr.StudyInstanceUID == dicom_corpus.STUDY_UID and sr.SoftwareVersions == ANSWER["model_id"]
