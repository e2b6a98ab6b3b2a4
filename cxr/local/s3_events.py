"""Real S3 notification JSON, as S3 delivers it to Lambda, for the local runtime and the tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from urllib.parse import quote_plus

_SEQUENCE = itertools.count(0x1000)


def next_sequencer() -> str:
    """Increasing hex sequencers like S3's, so ordering rules can be exercised."""
    return f"{next(_SEQUENCE):016X}"


def object_created_record(
    bucket: str,
    key: str,
    size: int,
    version_id: str | None = None,
    etag: str = "",
    sequencer: str | None = None,
    region: str = "us-east-1",
    event_name: str = "ObjectCreated:Put",
) -> dict:
    """One ``Records[]`` entry; the key is form-encoded exactly as S3 encodes it."""
    obj = {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag, "sequencer": sequencer or next_sequencer()}
    if version_id is not None:
        obj["versionId"] = version_id
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:LOCAL"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "LOCAL", "x-amz-id-2": "LOCAL"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "local",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "LOCAL"}, "arn": f"arn:aws:s3:::{bucket}"},
            "object": obj,
        },
    }


def event(*records: dict) -> dict:
    return {"Records": list(records)}


def record_for_object(s3_client, bucket: str, key: str, version_id: str | None = None) -> dict:
    """The notification S3 would send for an object that is already stored."""
    kwargs = {"Bucket": bucket, "Key": key}
    if version_id:
        kwargs["VersionId"] = version_id
    head = s3_client.head_object(**kwargs)
    return object_created_record(
        bucket, key, head["ContentLength"], version_id=head.get("VersionId"), etag=head["ETag"].strip('"')
    )
