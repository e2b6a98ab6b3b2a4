"""Datasets as ingest leaves them: uploads put through the real preprocess handler (moto must be active)."""

from __future__ import annotations

import boto3

import corpus
from cxr.local import s3_events
from cxr.local.context import LambdaContext
from infra import wiring
from lambdas.domain import layout, source_names, source_state

PSEUDONYM_SECRET = "n" * 48
"""The handlers' pseudonym key in tests (the ``state_table`` fixture): it names every upload."""


def name_of(key: str, bucket: str = "cxr-data") -> str:
    """The opaque name the handlers give an upload (``lambdas/domain/source_names.py``)."""
    return source_names.name(PSEUDONYM_SECRET.encode(), bucket, key)


def quarantine_key(key: str, bucket: str = "cxr-data") -> str:
    """Where a rejected ``raw/`` upload's reason is written."""
    return layout.quarantine_key(source_state.scope(key), name_of(key, bucket))


def create_state_table(name: str) -> str:
    """The source-state table as infra.wiring describes it."""
    from lambdas import aws

    spec = wiring.SOURCE_STATE_TABLE
    keys = [(spec.partition_key, "HASH"), (spec.sort_key, "RANGE")]
    aws.client("dynamodb").create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST", KeySchema=[{"AttributeName": n, "KeyType": t} for n, t in keys],
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n, _ in keys])
    return name


def ingest(bucket: str, uploads: dict[str, bytes]) -> dict:
    """Upload each key, then hand S3's notifications to the preprocess handler; returns its counts.

    The handler reads the table named by ``SOURCE_STATE_TABLE`` in the environment.
    """
    from lambdas import preprocess

    s3 = boto3.client("s3")
    records = []
    for key, body in uploads.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        records.append(s3_events.record_for_object(s3, bucket, key))
    return preprocess.handler(s3_events.event(*records), LambdaContext(function_name="preprocess"))


def remove(bucket: str, key: str) -> dict:
    """Delete a key (a delete marker) and hand S3's ``ObjectRemoved`` notification to the preprocess handler."""
    from lambdas import preprocess

    marker = boto3.client("s3").delete_object(Bucket=bucket, Key=key)["VersionId"]
    record = s3_events.object_created_record(bucket, key, 0, version_id=marker,
                                             event_name="ObjectRemoved:DeleteMarkerCreated")
    return preprocess.handler(s3_events.event(record), LambdaContext(function_name="preprocess"))


FILE_NAMES = {"normal": "NORMAL/IM-{p:04d}-{i:04d}.png", "bacterial": "PNEUMONIA/person{p}_bacteria_{i}.png",
              "viral": "PNEUMONIA/person{p}_virus_{i}.png", "pneumonia": "PNEUMONIA/person{p}_{i}.png"}
"""Kermany's names per label: the folder gives the label, the name the sub-type and the patient id."""


def kermany_like(patients: int, labels=("normal", "bacterial", "viral"), per_patient: int = 1,
                 prefix: str = "raw/kermany/train/", first: int = 0) -> dict[str, bytes]:
    """Tiny images, distinct per patient number and index; patient ``p`` labelled ``labels[p % len(labels)]``."""
    return {prefix + FILE_NAMES[labels[p % len(labels)]].format(p=p, i=i): corpus.png(40, 32, seed=1000 * p + i)
            for p in range(first, first + patients) for i in range(per_patient)}
