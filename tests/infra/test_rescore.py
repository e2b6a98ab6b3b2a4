"""The post-deployment re-score's start step on moto: off by default, nothing to do, or a transform job."""

from __future__ import annotations

import json

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_in_lambda_mode_the_copies_are_staged_in_batches_and_no_transform_job_starts(rescore_env, lambda_context,
                                                                                      monkeypatch):
    monkeypatch.setenv(wiring.ENV_RESCORE_DAYS, "7")
    monkeypatch.setenv(wiring.ENV_ENDPOINT_MODE, "lambda")
    s3 = boto3.client("s3")
    for i in range(5):
        s3.put_object(Bucket=rescore_env, Key=f"incoming/x{i}.png", Body=b"x")
    out = rescore.start_handler({"run_id": "r", "model_package_arn": "arn:pkg/1"}, lambda_context)
    assert out["started"] and out["scorer"] == rescore.IN_FUNCTION and out["package"] == "arn:pkg/1"
    staged = sorted(o["Key"].rsplit("/", 1)[1] for o in s3.list_objects_v2(
        Bucket=rescore_env, Prefix=f"batch-input/{out['job']}/")["Contents"])
    assert out["batches"] == rescore.batches(staged) == [{"start_after": "", "last": None}]
    assert boto3.client("sagemaker").list_transform_jobs()["TransformJobSummaries"] == []


@settings(max_examples=60, deadline=None)
@given(names=st.sets(st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_characters="/"),
                             min_size=1, max_size=6), max_size=40),
       size=st.integers(1, 7), most=st.integers(1, 9))
def test_the_batches_cover_every_staged_name_once_in_s3s_order(names, size, most):
    """What ``batch_handler`` lists for each batch (after ``start_after``, up to ``last``, in UTF-8 byte order)
    partitions the names, and there are never more than ``most`` batches."""
    found = rescore.batches(list(names), size, most)
    ordered = sorted(names, key=str.encode)
    listed = [[n for n in ordered if b["start_after"].encode() < n.encode()
               and (b["last"] is None or n.encode() <= b["last"].encode())] for b in found]
    assert [n for batch in listed for n in batch] == ordered
    assert all(batch for batch in listed) and len(found) <= most
    assert [b["last"] for b in found].count(None) == (1 if names else 0) and (not found or found[-1]["last"] is None)


def test_a_rescore_in_the_function_is_reported_without_a_transform_job(rescore_env, lambda_context, monkeypatch):
    monkeypatch.setenv(wiring.ENV_DATA_BUCKET, rescore_env)
    s3, job = boto3.client("s3"), f"{PREFIX}rescore-r"
    s3.put_object(Bucket=rescore_env, Key=f"batch-input/{job}/s-1", Body=b"x")
    s3.put_object(Bucket=rescore_env, Key=f"batch-output/{job}/s-1.out",
                  Body=json.dumps({"label": "normal", "confidence": 0.8}).encode())
    event = {"run_id": "r", "job": job, "input": f"s3://{rescore_env}/batch-input/{job}/",
             "output": f"s3://{rescore_env}/batch-output/{job}/", "images": 1, "started": True,
             "scorer": rescore.IN_FUNCTION}
    out = rescore.status_handler(event, lambda_context)
    assert out["done"] and out["scored"] == 1 and out["report"].endswith("reports/r/rescore.csv")
    with pytest.raises(Exception, match="TransformJob"):  # the transform path would describe a job that is not
        rescore.status_handler({**event, "scorer": None}, lambda_context)


def test_each_batch_lists_its_names_and_the_last_one_takes_what_a_retried_start_staged_late(rescore_env):
    s3, prefix = boto3.client("s3"), "batch-input/job/"
    for name in ("s-a", "s-b", "s-c", "s-d"):  # s-d: staged by an earlier attempt, not among this attempt's names
        s3.put_object(Bucket=rescore_env, Key=prefix + name, Body=b"x")
    found = rescore.batches(["s-c", "s-a", "s-b"], size=2)
    assert found == [{"start_after": "", "last": "s-b"}, {"start_after": "s-b", "last": None}]
    assert [rescore._listed(rescore_env, prefix, b["start_after"], b["last"]) for b in found] == [
        [prefix + "s-a", prefix + "s-b"], [prefix + "s-c", prefix + "s-d"]]
