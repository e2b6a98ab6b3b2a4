"""The offline cloud sends S3's ObjectRemoved notifications (moto 5.2.5 does not, for versioned buckets)."""

from __future__ import annotations

import json

import boto3
import pytest

import corpus
from cxr.local import cloud as local_cloud
from cxr.local import removal_events
from infra import wiring
from infra.config import Config

KEY = "raw/wards/NORMAL/a.png"


@pytest.fixture
def cloud(tmp_path):
    with local_cloud.start(Config.demo(stage="removals"), tmp_path / "local") as running:
        yield running


def sidecar_versions(s3, bucket: str) -> list[str]:
    """The source version named by each current processed sidecar."""
    listing = s3.list_objects_v2(Bucket=bucket, Prefix="processed/").get("Contents", [])
    return [json.loads(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())["source"]["version_id"]
            for o in listing if o["Key"].endswith(".json")]


def test_the_hook_still_matches_moto():
    removal_events.check()


def test_a_delete_marker_retires_the_processed_image(cloud):
    s3, bucket = boto3.client("s3"), cloud.names.bucket(wiring.DATA)
    s3.put_object(Bucket=bucket, Key=KEY, Body=corpus.png(48, 40))
    assert len(sidecar_versions(s3, bucket)) == 1
    s3.delete_object(Bucket=bucket, Key=KEY)
    assert sidecar_versions(s3, bucket) == []
    assert len(s3.list_object_versions(Bucket=bucket, Prefix=KEY)["Versions"]) == 1  # the upload is kept


def test_deleting_the_newest_version_brings_the_previous_one_back(cloud):
    s3, bucket = boto3.client("s3"), cloud.names.bucket(wiring.DATA)
    first = s3.put_object(Bucket=bucket, Key=KEY, Body=corpus.png(48, 40, seed=1))["VersionId"]
    second = s3.put_object(Bucket=bucket, Key=KEY, Body=corpus.png(48, 40, seed=2))["VersionId"]
    assert sidecar_versions(s3, bucket) == [second]
    s3.delete_object(Bucket=bucket, Key=KEY, VersionId=second)  # ObjectRemoved:Delete; the first is current again
    assert sidecar_versions(s3, bucket) == [first]
