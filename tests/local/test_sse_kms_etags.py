"""The offline cloud encrypts its buckets as the stacks do, and S3's ETags follow: under SSE-KMS they are no MD5.

S3 API Reference, ``Object.ETag``: objects written by PUT or Copy "and encrypted by SSE-C or SSE-KMS,
have ETags that are not an MD5 digest of their object data"; plaintext and SSE-S3 objects' are.
"""

import hashlib

import boto3
import pytest

import corpus
from cxr.local import cloud as local_cloud
from cxr.local import hooks
from infra import asl, wiring
from infra.config import Config

PSEUDO = {"AWS::AccountId": local_cloud.ACCOUNT, "AWS::Region": local_cloud.REGION, "AWS::Partition": "aws"}


@pytest.fixture(scope="module")
def cloud(module_dir):
    with local_cloud.start(Config.demo(stage="e2e"), module_dir("local")) as running:
        yield running


def md5(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def test_objects_in_sse_kms_buckets_have_etags_that_are_not_their_md5(cloud):
    s3, body = boto3.client("s3"), corpus.png()
    data, logs = cloud.names.bucket(wiring.DATA), cloud.names.bucket(wiring.ACCESS_LOGS)
    put = s3.put_object(Bucket=data, Key="manifests/run/a.png", Body=body)  # no trigger under manifests/
    assert put["ServerSideEncryption"] == "aws:kms" and put["SSEKMSKeyId"] == cloud.kms_key_arn
    assert put["ETag"] != md5(body)
    assert s3.head_object(Bucket=data, Key="manifests/run/a.png")["ETag"] == put["ETag"]  # fixed per version
    again = s3.put_object(Bucket=data, Key="manifests/run/a.png", Body=body)
    assert again["ETag"] != put["ETag"]  # a new version of the same bytes: a new ETag, no digest to compare
    copy = s3.copy_object(Bucket=data, Key="manifests/run/b.png", CopySource={"Bucket": data,
                                                                           "Key": "manifests/run/a.png"})
    assert copy["CopyObjectResult"]["ETag"] not in (md5(body), put["ETag"], again["ETag"])
    listed = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=data, Prefix="manifests/run/")["Contents"]}
    assert listed == {"manifests/run/a.png": again["ETag"], "manifests/run/b.png": copy["CopyObjectResult"]["ETag"]}

    plain = s3.put_object(Bucket=logs, Key="DataBucket/log", Body=body)  # SSE-S3, as S3 log delivery needs
    assert plain["ServerSideEncryption"] == "AES256" and plain["ETag"] == md5(body)


def test_bucket_encryption_agrees_with_the_synthesized_stacks(synthesized, cloud):
    buckets = [r["Properties"] for t in synthesized.templates for r in t["Resources"].values()
               if r["Type"] == "AWS::S3::Bucket" and "BucketName" in r["Properties"]]  # not the review page's
    assert len(buckets) == len(wiring.BUCKETS)
    for bucket in buckets:
        [deployed] = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        [local] = boto3.client("s3").get_bucket_encryption(Bucket=asl.resolve(bucket["BucketName"], PSEUDO))[
            "ServerSideEncryptionConfiguration"]["Rules"]
        algorithm = deployed["ServerSideEncryptionByDefault"]["SSEAlgorithm"]
        assert local["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == algorithm
        assert local.get("BucketKeyEnabled", False) == deployed.get("BucketKeyEnabled", False)
        if algorithm == "aws:kms":
            assert local["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"] == cloud.kms_key_arn


def test_hook_check_notices_when_moto_s_etag_stops_being_a_property(monkeypatch):
    monkeypatch.setattr(hooks.s3_models.FakeKey, "etag", lambda self: "")
    with pytest.raises(RuntimeError, match="FakeKey.etag is no longer a property"):
        hooks.check()
