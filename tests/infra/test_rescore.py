"""The post-deployment re-score's start step on moto: off by default, nothing to do, or a transform job."""

from __future__ import annotations

import json

import boto3
import pytest

from infra import wiring
from ingested import name_of
from lambdas import rescore

PREFIX = wiring.resource_prefix("test")


@pytest.fixture
def rescore_env(data_bucket, state_table, monkeypatch):  # state_table: the pseudonym secret in the environment
    monkeypatch.setenv(wiring.ENV_INFERENCE_BUCKET, data_bucket)
    monkeypatch.setenv(wiring.ENV_RESOURCE_PREFIX, PREFIX)
    return data_bucket


def test_off_by_default_and_nothing_recent(rescore_env, lambda_context, monkeypatch):
    assert rescore.start_handler({"run_id": "r", "model_name": "m"}, lambda_context)["started"] is False
    monkeypatch.setenv(wiring.ENV_RESCORE_DAYS, "7")
    out = rescore.start_handler({"run_id": "r", "model_name": "m"}, lambda_context)
    assert out == {"started": False, "reason": "no X-rays under incoming/ in the last 7 days"}


def test_recent_uploads_are_copied_under_their_names_for_the_job(rescore_env, lambda_context, monkeypatch):
    """Batch Transform names answers after inputs: the job reads copies named like the predictions, never keys."""
    monkeypatch.setenv(wiring.ENV_RESCORE_DAYS, "7")
    s3 = boto3.client("s3")
    for key in ("incoming/a/DOE_JOHN_1.jpeg", "incoming/b.png", "other/c.png", "incoming/.names/s-0123"):
        s3.put_object(Bucket=rescore_env, Key=key, Body=key.encode())  # other/ and the pointer are not uploads
    out = rescore.start_handler({"run_id": "run 1/x", "model_name": "m"}, lambda_context)
    assert out["started"] and out["job"] == f"{PREFIX}rescore-run-1-x" and out["images"] == 2
    staged = f"batch-input/{out['job']}/"
    assert out["input"] == f"s3://{rescore_env}/{staged}"
    for key in ("incoming/a/DOE_JOHN_1.jpeg", "incoming/b.png"):
        copy = s3.get_object(Bucket=rescore_env, Key=staged + name_of(key, rescore_env))["Body"].read()
        assert copy == key.encode()
    assert not [o["Key"] for o in s3.list_objects_v2(Bucket=rescore_env, Prefix="batch-")["Contents"]
                if "DOE" in o["Key"] or "incoming" in o["Key"]]
    job = boto3.client("sagemaker").describe_transform_job(TransformJobName=out["job"])
    assert job["TransformInput"]["DataSource"]["S3DataSource"] == {"S3DataType": "S3Prefix",
                                                                   "S3Uri": out["input"]}
    assert job["Environment"] == {"CXR_PER_RECORD_ERRORS": "1"}


def test_the_report_joins_answers_to_predictions_by_name(rescore_env, lambda_context, monkeypatch):
    s3 = boto3.client("s3")
    job, staged = f"{PREFIX}rescore-r", f"batch-input/{PREFIX}rescore-r/"
    for name, old, new in (("s-1", "normal", "viral"), ("s-2", "viral", "viral"), ("s-3", "normal", None)):
        s3.put_object(Bucket=rescore_env, Key=staged + name, Body=b"x")
        s3.put_object(Bucket=rescore_env, Key=f"predictions/{name}.json",
                      Body=json.dumps({"label": old, "model_id": "m1"}).encode())
        if new:
            s3.put_object(Bucket=rescore_env, Key=f"batch-output/{job}/{name}.out",
                          Body=json.dumps({"label": new, "confidence": 0.9}).encode())
    rows = rescore.compare({"input": f"s3://{rescore_env}/{staged}",
                            "output": f"s3://{rescore_env}/batch-output/{job}/"})
    assert [(r["name"], r["changed"], r["error"]) for r in rows] == [
        ("s-1", "true", ""), ("s-2", "false", ""), ("s-3", "false", "the job wrote no answer")]


def test_job_names_fit_sagemaker():
    name = rescore.job_name(PREFIX, "a" * 80 + "_b")
    assert len(name) <= 63 and name.startswith(f"{PREFIX}rescore-") and not name.endswith("-")
