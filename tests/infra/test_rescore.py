"""The post-deployment re-score's start step on moto: off by default, nothing to do, or a transform job."""

from __future__ import annotations

import json

import boto3
import pytest

from infra import wiring
from lambdas import rescore

PREFIX = wiring.resource_prefix("test")


@pytest.fixture
def rescore_env(data_bucket, monkeypatch):
    monkeypatch.setenv(wiring.ENV_INFERENCE_BUCKET, data_bucket)
    monkeypatch.setenv(wiring.ENV_RESOURCE_PREFIX, PREFIX)
    return data_bucket


def test_off_by_default_and_nothing_recent(rescore_env, lambda_context, monkeypatch):
    assert rescore.start_handler({"run_id": "r", "model_name": "m"}, lambda_context)["started"] is False
    monkeypatch.setenv(wiring.ENV_RESCORE_DAYS, "7")
    out = rescore.start_handler({"run_id": "r", "model_name": "m"}, lambda_context)
    assert out == {"started": False, "reason": "no X-rays under incoming/ in the last 7 days"}


def test_recent_uploads_become_a_manifest_job(rescore_env, lambda_context, monkeypatch):
    monkeypatch.setenv(wiring.ENV_RESCORE_DAYS, "7")
    s3 = boto3.client("s3")
    for key in ("incoming/a/1.jpeg", "incoming/b.png", "other/c.png", "incoming/.names/s-0123"):  # no pointer
        s3.put_object(Bucket=rescore_env, Key=key, Body=b"x")
    out = rescore.start_handler({"run_id": "run 1/x", "model_name": "m"}, lambda_context)
    assert out["started"] and out["job"] == f"{PREFIX}rescore-run-1-x" and out["images"] == 2
    manifest = json.loads(s3.get_object(Bucket=rescore_env, Key=f"batch-input/{out['job']}.manifest")["Body"].read())
    assert manifest == [{"prefix": f"s3://{rescore_env}/"}, "incoming/a/1.jpeg", "incoming/b.png"]
    job = boto3.client("sagemaker").describe_transform_job(TransformJobName=out["job"])
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3DataType"] == "ManifestFile"
    assert job["Environment"] == {"CXR_PER_RECORD_ERRORS": "1"}


def test_job_names_fit_sagemaker():
    name = rescore.job_name(PREFIX, "a" * 80 + "_b")
    assert len(name) <= 63 and name.startswith(f"{PREFIX}rescore-") and not name.endswith("-")
