"""`cxr fsck` on the offline cloud: a bucket damaged by hand is named key by key, and repaired."""

from __future__ import annotations

import json

import boto3
import pytest

import corpus
from cxr import target
from cxr.commands import fsck
from cxr.local import cloud as local_cloud
from infra import wiring
from infra.config import Config
from lambdas.domain import layout, source_state

DATASET = "wards"
A, B, C, D = (f"raw/{DATASET}/NORMAL/{name}.png" for name in "abcd")


@pytest.fixture
def cloud(tmp_path):
    with local_cloud.start(Config.demo(stage="fsck"), tmp_path / "local") as running:
        yield running


@pytest.fixture
def ingest(cloud, monkeypatch):
    """Four uploads, ingested by the offline cloud's own triggers; fsck aimed at it."""
    s3, bucket = boto3.client("s3"), cloud.names.bucket(wiring.DATA)
    for seed, key in enumerate((A, B, C)):
        s3.put_object(Bucket=bucket, Key=key, Body=corpus.png(48, 40, seed=seed))
    s3.put_object(Bucket=bucket, Key=D, Body=corpus.minimal_pdf())
    deployment = target.Target(session=boto3.Session(), stage="fsck", account=local_cloud.ACCOUNT,
                               region=local_cloud.REGION)
    monkeypatch.setattr(fsck.target, "resolve", lambda args: deployment)
    monkeypatch.setattr(fsck, "preprocess_function", lambda deployment: cloud.names.function(wiring.PREPROCESS))
    return fsck.Ingest.of(deployment)


def record_of(ingest, key: str) -> dict:
    records = ingest.store.records(source_state.dataset_partition(ingest.bucket, DATASET))
    return next(r for r in records if r["source"]["name"] == ingest.name_of(key))


def test_an_intact_dataset_is_consistent(ingest, capsys):
    assert ingest.check(DATASET) == []
    assert fsck.run(type("Args", (), {"dataset": DATASET, "repair": False, "json": False})()) == 0
    assert "consistent" in capsys.readouterr().out


def test_damage_is_named_key_by_key_and_repaired(ingest, cloud, capsys):
    s3, bucket = boto3.client("s3"), ingest.bucket
    image_a = record_of(ingest, A)["image"]["processed_key"]
    s3.delete_object(Bucket=bucket, Key=image_a)  # a processed image lost
    stale = f"processed/{DATASET}/normal/{'0' * 32}.json"  # a sidecar no record owns, naming B
    s3.put_object(Bucket=bucket, Key=stale, Body=json.dumps({"source": {"name": ingest.name_of(B),
                                                                                 "version_id": "older"}}))
    table = ingest.store.table
    boto3.client("dynamodb").delete_item(TableName=table, Key={  # a state record lost
        "pk": {"S": source_state.partition(bucket, C)}, "sk": {"S": source_state.source_sort_key(ingest.name_of(C))}})
    s3.delete_object(Bucket=bucket, Key=layout.quarantine_key(f"raw/{DATASET}", ingest.name_of(D)))  # a rejection lost

    findings = {(f.key, f.problem) for f in ingest.check(DATASET)}
    assert findings == {(A, "missing"), (B, "duplicated"), (C, "missing"), (D, "missing")}

    args = type("Args", (), {"dataset": DATASET, "repair": True, "json": True})()
    assert fsck.run(args) == 0
    out = capsys.readouterr().out  # in-process, the functions' metrics print here too
    report = json.loads(out[out.index('{\n "dataset"'):])
    assert {f["key"] for f in report["findings"]} == {A, B, C, D} and report["after_repair"] == []
    assert report["repaired"]["rederived"] == [A, B, C, D]
    assert stale in report["repaired"]["tombstoned"]  # with C's outputs, which had no record: C rewrites them
    assert ingest.check(DATASET) == []
    s3.head_object(Bucket=bucket, Key=image_a)  # the image is back
    assert record_of(ingest, C)["outcome"] == "processed"
    s3.head_object(Bucket=bucket, Key=record_of(ingest, C)["image"]["processed_key"])
    versions = s3.list_object_versions(Bucket=bucket, Prefix=f"raw/{DATASET}/")
    assert len(versions["Versions"]) == 4 and not versions.get("DeleteMarkers")  # no upload was touched


def test_a_key_recorded_for_an_old_version_is_stale(ingest, cloud):
    """As after an outage: the newest upload's event never arrived (here: notifications switched off)."""
    s3, bucket = boto3.client("s3"), ingest.bucket
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})
    s3.put_object(Bucket=bucket, Key=A, Body=corpus.minimal_pdf())
    s3.delete_object(Bucket=bucket, Key=B)
    findings = {(f.key, f.problem) for f in ingest.check(DATASET)}
    assert findings == {(A, "stale"), (B, "stale")}
    ingest.repair(ingest.check(DATASET))
    assert ingest.check(DATASET) == []
    assert record_of(ingest, A)["reason"] == "unsupported_format" and record_of(ingest, B)["outcome"] == "deleted"
