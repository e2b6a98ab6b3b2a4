"""`cxr predict` through the bucket: each file its own key, each result the one of the version it uploaded."""

from __future__ import annotations

import json

import boto3
import pytest

from cxr import operations
from ingested import name_of
from lambdas.domain import layout

BUCKET = "cxr-inference"


def named(key: str) -> str:
    """The key's opaque name, as the predict function and `cxr predict` compute it with the deployment's secret."""
    return name_of(key, BUCKET)


@pytest.fixture
def inference_bucket(aws, monkeypatch):
    """A versioned bucket and a stand-in predict Lambda that answers while the command waits."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})

    def predict_what_is_there(seconds):
        """Each current ``incoming/`` object gets a prediction naming its version; its label is its own bytes."""
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=layout.INCOMING):
            for obj in page.get("Contents", []):
                current = s3.get_object(Bucket=BUCKET, Key=obj["Key"])
                record = {"source": {"name": named(obj["Key"]), "version_id": current["VersionId"]},
                          "label": current["Body"].read().decode()}
                s3.put_object(Bucket=BUCKET, Key=layout.prediction_key(named(obj["Key"])), Body=json.dumps(record))

    monkeypatch.setattr(operations.time, "sleep", predict_what_is_there)
    return s3


def test_two_files_with_one_name_get_their_own_predictions(inference_bucket, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    a.write_text("from a")
    b.write_text("from b")
    results = operations.predict_files(inference_bucket, BUCKET, [a, b], named, timeout_s=5, prefix="run/")
    assert results[a]["label"] == "from a" and results[b]["label"] == "from b"
    assert [results[p]["source"]["name"] for p in (a, b)] == [named("incoming/run/0000/x.png"),
                                                              named("incoming/run/0001/x.png")]


def test_an_outcome_of_another_version_is_not_taken_for_this_one(inference_bucket, tmp_path):
    path = tmp_path / "x.png"
    path.write_text("this upload")
    key = f"{layout.INCOMING}run/0000/x.png"  # where the call will upload it
    stale = {"source": {"name": named(key), "version_id": "an-older-version"}, "label": "someone else's"}
    inference_bucket.put_object(Bucket=BUCKET, Key=layout.prediction_key(named(key)), Body=json.dumps(stale))
    result = operations.predict_files(inference_bucket, BUCKET, [path], named, timeout_s=5, prefix="run/")[path]
    assert result["status"] == "predicted" and result["label"] == "this upload"


def test_two_runs_in_one_second_do_not_share_keys():
    from cxr.commands import predict

    assert predict.run_prefix() != predict.run_prefix()
