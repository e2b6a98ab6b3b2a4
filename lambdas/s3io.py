"""S3 reads and writes the handlers share: JSON records, current and versioned reads, tombstones."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventRecord
from botocore.exceptions import ClientError

from lambdas import aws
from lambdas.domain import audit, imaging, source_names


@dataclass(frozen=True)
class SourceObject:
    """The object an S3 notification announces."""

    bucket: str
    key: str
    size: int
    version_id: str | None
    sequencer: str
    name: str = ""
    """The key's opaque name (``lambdas/domain/source_names.py``): what records say instead of the key."""

    @classmethod
    def from_record(cls, record: S3EventRecord) -> SourceObject:
        obj = record.s3.get_object
        return cls(
            bucket=record.s3.bucket.name,
            key=unquote_plus(obj.key),  # S3 form-encodes keys in events: decode exactly once
            size=obj.size or 0,
            version_id=obj.version_id,
            sequencer=obj.get("sequencer", ""),
        )

    def describe(self) -> dict:
        """The object as records and outputs name it: never its key."""
        return {"bucket": self.bucket, "name": self.name, "version_id": self.version_id, "size": self.size}


@dataclass(frozen=True)
class CurrentObject:
    """A key's current version, its body not yet read (a too-large upload is refused from its size)."""

    version_id: str | None
    size: int
    metadata: dict[str, str]
    body: object

    def read(self) -> bytes:
        return self.body.read()

    def close(self) -> None:
        """Let go of the connection when the body was never read (a rejected key or size)."""
        self.body.close()


def current_object(bucket: str, key: str) -> CurrentObject | None:
    """The key's current version (GetObject without a version id), or None when it is deleted or gone."""
    try:
        response = aws.client("s3").get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if aws.is_missing(exc):  # a delete marker answers 404 NoSuchKey, as does a key that never was
            return None
        raise
    version = response.get("VersionId")
    return CurrentObject(version_id=None if version in (None, "null") else version,
                         size=int(response.get("ContentLength", 0)), metadata=response.get("Metadata", {}),
                         body=response["Body"])


@dataclass(frozen=True)
class CurrentVersion:
    version_id: str | None
    size: int


def current_version(bucket: str, key: str) -> CurrentVersion | None:
    """The key's current version as HeadObject sees it (nothing read), or None when it is deleted or gone."""
    try:
        head = aws.client("s3").head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if aws.is_missing(exc):  # a delete marker answers 404, as does a key that never was
            return None
        raise
    version = head.get("VersionId")
    return CurrentVersion(None if version in (None, "null") else version, int(head.get("ContentLength", 0)))


def tombstone(bucket: str, key: str) -> None:
    """Retire an output: a delete without a version id, so a versioned bucket keeps every version."""
    aws.client("s3").delete_object(Bucket=bucket, Key=key)


def download(bucket: str, key: str, version_id: str | None) -> tuple[bytes, dict[str, str]]:
    """The exact version the event announced and its user metadata; a vanished object is a permanent rejection."""
    kwargs = {"Bucket": bucket, "Key": key}
    if version_id:
        kwargs["VersionId"] = version_id
    try:
        response = aws.client("s3").get_object(**kwargs)
        return response["Body"].read(), response.get("Metadata", {})
    except ClientError as exc:
        if aws.is_missing(exc):
            raise imaging.RejectedImage(
                "source_missing", "the uploaded object (or this version of it) no longer exists"
            ) from None
        raise


def read_json(bucket: str, key: str) -> dict | None:
    try:
        body = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if aws.is_missing(exc):
            return None
        raise
    return json.loads(body)


def put_json(bucket: str, key: str, document: dict, *, retain_until: datetime | None = None) -> None:
    """Write a JSON document; with ``retain_until``, the new version is locked until then (Object Lock, governance).

    S3 refuses an upload with a retention period that has neither ``Content-MD5`` nor a checksum ("The
    Content-MD5 or x-amz-sdk-checksum-algorithm header is required for any request to upload an object with
    a retention period configured using Amazon S3 Object Lock", S3 User Guide, "Using S3 Object Lock"),
    so the SHA-256 is asked for explicitly rather than left to the SDK's default.
    """
    body = json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False).encode()
    lock = {} if retain_until is None else {"ObjectLockMode": audit.RETENTION_MODE,
                                            "ObjectLockRetainUntilDate": retain_until, "ChecksumAlgorithm": "SHA256"}
    aws.client("s3").put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **lock)


def put_dicom(bucket: str, key: str, data: bytes) -> None:
    aws.client("s3").put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/dicom")


def put_png(bucket: str, key: str, png: bytes) -> None:
    aws.client("s3").put_object(Bucket=bucket, Key=key, Body=png, ContentType="image/png")


def put_pointer(bucket: str, key: str, source_name: str) -> None:
    """Keep ``key`` as the body of its name's pointer object, beside the upload (``source_names.pointer_key``).

    Written when a key is first derived (again only on a retry): its own S3 event invokes the upload's
    function, which skips it. Never looked up first: without ``s3:ListBucket`` a missing object answers 403.
    """
    aws.client("s3").put_object(Bucket=bucket, Key=source_names.pointer_key(key, source_name), Body=key.encode(),
                                ContentType="text/plain")


def pointed_key(bucket: str, area_key: str, source_name: str) -> str | None:
    """The key a name stands for, from its pointer in the area of ``area_key``; None when there is none."""
    try:
        body = aws.client("s3").get_object(Bucket=bucket, Key=source_names.pointer_key(area_key, source_name))["Body"]
    except ClientError as exc:
        if aws.is_missing(exc):
            return None
        raise
    return body.read().decode()
