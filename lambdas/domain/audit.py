"""The audit trail's rules: which model, artifact, rule and code decided a prediction, and how long it is kept.

Every prediction record (the S3 JSON, the DynamoDB item, `cxr predict --direct`) carries one ``audit``
block built here, so `cxr audit` can trace an X-ray to the exact artifact that judged it. Pure: the
handlers and the command line share it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

ARTIFACT_SHA256_VARIABLE = "CXR_ARTIFACT_SHA256"
"""The SageMaker model's environment variable naming its packed artifact's digest (``training_job/inference.py``)."""
ARTIFACT_TAG = "cxr:artifact-sha256"
"""The same digest as a tag on the SageMaker model and endpoint configuration."""
CODE_VERSION_VARIABLE = "CXR_CODE_VERSION"
"""The project version and git commit the functions were packaged from (``infra.version.code_version``)."""
UNKNOWN = "unknown"

RETENTION_MODE = "GOVERNANCE"
"""S3 Object Lock mode of each prediction JSON: a user with ``s3:BypassGovernanceRetention`` can still remove a
version on purpose (COMPLIANCE would let no one, not even the account's root user, until the date)."""


def fields(answer: Mapping, *, code_version: str) -> dict:
    """The ``audit`` block of one prediction, from the endpoint's answer.

    The time is the record's own ``predicted_at``.
    The threshold and band in force are the model's own decision rule, which its answer names; an
    endpoint older than the rule names none (None: its records are all referred, ``lambdas.predict``).
    """
    answer_band = answer.get("referral_band")
    return {
        "content_hash": answer.get("content_hash"),
        "artifact_sha256": answer.get("artifact_sha256") or UNKNOWN,
        "model_id": answer.get("model_id"),
        "threshold": answer.get("threshold"),
        "referral_band": [float(v) for v in answer_band] if answer_band else None,
        "code_version": code_version or UNKNOWN,
    }


def retain_until(days: int, now: datetime | None = None) -> datetime | None:
    """The Object Lock ``RetainUntilDate`` of a record written now, or None when retention is off (0 days)."""
    if days <= 0:
        return None
    return (now or datetime.now(UTC)) + timedelta(days=days)


class DigestingReader:
    """A read-only stream that hashes every byte read through it (SHA-256), so an archive is hashed while parsed."""

    def __init__(self, stream):
        self.stream, self.sha256, self.size = stream, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def drain(self, chunk: int = 1 << 20) -> str:
        """Read to the end; the hex digest of everything the stream held."""
        while self.read(chunk):
            pass
        return self.sha256.hexdigest()
