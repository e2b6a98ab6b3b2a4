"""The audit trail of the predict Lambda on moto: each record's audit block, and Object Lock on prediction JSON."""

from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.exceptions import ClientError
from handlers.test_predict import (  # noqa: F401 (fixtures)
    ANSWER,
    BUCKET,
    answer,
    counts,
    current,
    endpoint,
    inference,
    invoke,
    prediction_key,
    read_json,
    rejected_key,
    upload,
)

import corpus
from infra import wiring
from lambdas import aws, predict, s3io
from lambdas.domain import audit, imaging

DIGEST = "5e" * 32
FULL_ANSWER = {**ANSWER, "artifact_sha256": DIGEST, "threshold": 0.42, "referral_band": [0.3, 0.6]}


@pytest.fixture
def locked(inference, monkeypatch):  # noqa: F811
    """The inference bucket as the stacks make it: Object Lock enabled, no default retention; 30 days per record."""
    boto3.client("s3").put_object_lock_configuration(Bucket=BUCKET,
                                                     ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"})
    monkeypatch.setenv(wiring.ENV_PREDICTION_RETENTION_DAYS, "30")
    monkeypatch.setenv(wiring.ENV_CODE_VERSION, "0.1.0+gfeed")


def test_the_record_names_input_artifact_model_rule_and_code(endpoint, lambda_context, monkeypatch):  # noqa: F811
    monkeypatch.setenv(wiring.ENV_CODE_VERSION, "0.1.0+gfeed")
    body = corpus.jpeg(640, 480)
    content_hash = imaging.normalise(body).content_hash
    answer(endpoint, {**FULL_ANSWER, "content_hash": content_hash})
    assert invoke(lambda_context, upload("incoming/x.jpeg", body)) == counts(predicted=1)
    record = read_json(prediction_key("incoming/x.jpeg"))
    assert record["audit"] == {"content_hash": content_hash, "artifact_sha256": DIGEST, "model_id": "model-test-1",
                               "threshold": 0.42, "referral_band": [0.3, 0.6], "code_version": "0.1.0+gfeed"}
    assert datetime.fromisoformat(record["predicted_at"]) > datetime.now(UTC) - timedelta(minutes=1)
    item = boto3.client("dynamodb").scan(TableName="predictions")["Items"][0]
    assert item["content_hash"] == {"S": content_hash} and item["artifact_sha256"] == {"S": DIGEST}
    assert item["code_version"] == {"S": "0.1.0+gfeed"}


def test_an_answer_without_the_models_rule_records_no_band(endpoint, lambda_context):  # noqa: F811
    old = {k: v for k, v in ANSWER.items() if k not in predict.REFERRAL_FIELDS}
    answer(endpoint, old)  # an older model: no digest, referral, threshold or band in its answer
    invoke(lambda_context, upload("incoming/old.png", corpus.png(seed=2)))
    record = read_json(prediction_key("incoming/old.png"))
    trail = record["audit"]
    assert trail["referral_band"] is None and trail["threshold"] is None  # no rule of the Lambda's own
    assert record["refer_to_radiologist"] is True  # so it is referred (lambdas.predict.MODEL_WITHOUT_RULE)
    assert trail["artifact_sha256"] == audit.UNKNOWN and trail["code_version"] == audit.UNKNOWN


def test_prediction_json_is_locked_per_object_and_nothing_else_is(locked, endpoint, lambda_context):  # noqa: F811
    answer(endpoint, FULL_ANSWER)
    invoke(lambda_context, upload("incoming/p.png", corpus.png(seed=5)))
    s3 = boto3.client("s3")
    head = s3.head_object(Bucket=BUCKET, Key=prediction_key("incoming/p.png"))
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert timedelta(days=29) < head["ObjectLockRetainUntilDate"] - datetime.now(UTC) <= timedelta(days=30)
    assert "ObjectLockMode" not in s3.head_object(Bucket=BUCKET, Key="incoming/p.png")  # no bucket-wide default
    with pytest.raises(ClientError, match="AccessDenied"):  # a locked version cannot be deleted without bypass
        s3.delete_object(Bucket=BUCKET, Key=prediction_key("incoming/p.png"), VersionId=head["VersionId"])
    incoming = s3.head_object(Bucket=BUCKET, Key="incoming/p.png")["VersionId"]
    s3.delete_object(Bucket=BUCKET, Key="incoming/p.png", VersionId=incoming)  # the upload stays deletable
    assert invoke(lambda_context, {**upload("incoming/p.png", b"not an image")}) == counts(rejected=1)
    assert current("predictions/") == []  # tombstoned: a delete marker, the locked version kept
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix=prediction_key("incoming/p.png"))["Versions"]
    assert [v["VersionId"] for v in versions] == [head["VersionId"]]
    rejected = s3.head_object(Bucket=BUCKET, Key=rejected_key("incoming/p.png"))
    assert "ObjectLockMode" not in rejected
    s3.delete_object(Bucket=BUCKET, Key=rejected_key("incoming/p.png"), VersionId=rejected["VersionId"])


def test_retention_off_writes_unlocked_json(inference, endpoint, lambda_context, monkeypatch):  # noqa: F811
    monkeypatch.setenv(wiring.ENV_PREDICTION_RETENTION_DAYS, "0")
    answer(endpoint, FULL_ANSWER)
    invoke(lambda_context, upload("incoming/q.png", corpus.png(seed=6)))
    assert "ObjectLockMode" not in boto3.client("s3").head_object(Bucket=BUCKET, Key=prediction_key("incoming/q.png"))


def test_a_locked_write_sends_its_own_checksum(locked, monkeypatch):
    """S3 refuses a retention period without Content-MD5 or a checksum; put_json asks for SHA-256 itself, so it
    does not depend on the SDK's default (an SDK set to checksums ``when_required`` sends none for PutObject)."""
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    aws.reset_clients()
    until = audit.retain_until(1)
    s3io.put_json(BUCKET, "predictions/c.json", {"a": 1}, retain_until=until)
    with pytest.raises(ClientError, match="Content-MD5"):  # what the same request without the checksum meets
        aws.client("s3").put_object(Bucket=BUCKET, Key="predictions/d.json", Body=b"{}", ObjectLockMode="GOVERNANCE",
                                    ObjectLockRetainUntilDate=until)
