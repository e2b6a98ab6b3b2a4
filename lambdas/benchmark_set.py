"""The dataset's fixed benchmark set on S3: read it, or draw and store it once (rules: lambdas.domain.benchmark)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from botocore.exceptions import ClientError

from lambdas import aws
from lambdas.domain import benchmark, splits

CHANNEL = "benchmark"
"""The training job's input channel of the benchmark images (``SM_CHANNEL_BENCHMARK``)."""


def read(bucket: str, dataset: str) -> dict | None:
    """The stored set, or None. Listed first: S3 answers GetObject of a missing key 403, not 404, to a caller
    without ``s3:ListBucket`` on the bucket, and the function may list only the benchmarks' prefix."""
    key = benchmark.key(dataset)
    s3 = aws.client("s3")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents", [])
    if not listed or listed[0]["Key"] != key:
        return None
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def load_or_draw(bucket: str, dataset: str, run_id: str, items: list[splits.Item]) -> tuple[dict | None, str]:
    """The stored set, or a new one written with ``If-None-Match: *`` (S3 refuses the write with 412 when the
    key exists: S3 User Guide, "Conditional writes"), so of two runs drawing at once both use the first stored."""
    stored = read(bucket, dataset)
    if stored is not None:
        return stored, "stored"
    drawn, note = benchmark.draw(items, dataset, run_id, datetime.now(UTC).isoformat(timespec="seconds"))
    if drawn is None:
        return None, note
    try:
        aws.client("s3").put_object(Bucket=bucket, Key=benchmark.key(dataset), IfNoneMatch="*",
                                    Body=json.dumps(drawn, indent=1).encode(), ContentType="application/json")
    except ClientError as exc:
        if aws.error_code(exc) not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            raise
        return read(bucket, dataset), "stored by a concurrent run"
    return drawn, "drawn by this run"
