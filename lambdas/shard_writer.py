"""PrepareDataset's packing step: a split's processed PNGs into tar shards under ``manifests/<run>/shards/<split>/``.

Each shard is built in Lambda's /tmp (about 50 MB at 1,000 images) and uploaded with ``upload_fileobj``
(multipart above 8 MB); the PNGs of a shard are fetched on a few threads, in record order. Memory holds
one shard's images in flight at most, never the split. The shard format is :mod:`lambdas.domain.shards`.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor

from lambdas.domain import layout, shards

FETCH_THREADS = 16
"""GETs in flight while packing: S3 serves a prefix 5,500 GETs a second; Lambda's network, not S3, is the limit."""


def prefix(run_id: str, split: str) -> str:
    return f"{layout.MANIFESTS}{run_id}/shards/{split}/"


def write_split(s3, bucket: str, run_id: str, split: str, records: list[dict]) -> dict:
    """Pack ``records`` (the split's manifest records, in jsonl order) into shards; returns the channel's S3 prefix
    and the shard count."""
    def fetch(key: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    blocks = shards.plan(len(records))
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        for index, block in enumerate(blocks):
            members = records[block.start: block.stop]
            with tempfile.TemporaryFile() as spool:
                shards.write(spool, members, pool.map(fetch, (r["key"] for r in members)))
                spool.seek(0)
                s3.upload_fileobj(spool, bucket, prefix(run_id, split) + shards.name(index),
                                  ExtraArgs={"ContentType": "application/x-tar"})
    return {"uri": f"s3://{bucket}/{prefix(run_id, split)}", "shards": len(blocks)}
