"""The packing step (PackShards, :mod:`lambdas.pack_shards`): processed PNGs into tar shards under
``manifests/<run>/shards/<split>/``.

Each shard is built in Lambda's /tmp (about 50 MB at 1,000 images) and uploaded with ``upload_fileobj``
(multipart above 8 MB); the PNGs of a shard are fetched on a few threads, in record order. Memory holds
one shard's images in flight at most, never the split. The shard format is :mod:`lambdas.domain.shards`.
"""

from __future__ import annotations

import itertools
import tempfile
from concurrent.futures import ThreadPoolExecutor

from lambdas.domain import layout, shards

FETCH_THREADS = 16
"""GETs in flight while packing: S3 serves a prefix 5,500 GETs a second; Lambda's network, not S3, is the limit."""


def prefix(run_id: str, split: str) -> str:
    return f"{layout.MANIFESTS}{run_id}/shards/{split}/"


def write_shards(s3, bucket: str, run_id: str, split: str, records: list[dict], sizes: list[int], first: int) -> None:
    """Pack shards ``first``, ``first + 1``, ... of a split, of ``sizes`` records each, from ``records`` (their manifest
    records in jsonl order). The same records give the same objects, so a retried invocation rewrites identical
    shards."""
    def fetch(key: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    if len(records) != sum(sizes):
        raise ValueError(f"{len(records)} records for shards holding {sum(sizes)}")
    starts = list(itertools.accumulate(sizes, initial=0))
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        for index, (start, stop) in enumerate(itertools.pairwise(starts), start=first):
            members = records[start:stop]
            with tempfile.TemporaryFile() as spool:
                shards.write(spool, members, pool.map(fetch, (r["key"] for r in members)))
                spool.seek(0)
                s3.upload_fileobj(spool, bucket, prefix(run_id, split) + shards.name(index),
                                  ExtraArgs={"ContentType": "application/x-tar"})
