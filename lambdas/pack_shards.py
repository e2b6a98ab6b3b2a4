"""PackShards Lambda (training pipeline, one iteration of the PackShards Map state): one packing work item.

Input: an item of PrepareDataset's ``packing`` list (:mod:`lambdas.domain.packing`): a split's jsonl, its ETag, the
byte range holding the item's records and the item's shards. Reads those lines alone with a ranged GET pinned to
the ETag (``If-Match``: a jsonl rewritten since PrepareDataset fails with ``PreconditionFailed`` instead of packing
other records), then packs the shards (:func:`lambdas.shard_writer.write_shards`): the very objects one pass over
the split would write, so the Train state reads the same shards. Returns a few numbers, never the records.
"""

from __future__ import annotations

import json
import os

from aws_lambda_powertools import Logger

from lambdas import aws, shard_writer

logger = Logger(service="cxr-pack-shards")


def item_records(s3, bucket: str, item: dict) -> list[dict]:
    """The item's manifest records: the jsonl's bytes ``[start, stop)`` (HTTP ranges are inclusive)."""
    start, stop = item["bytes"]
    body = s3.get_object(Bucket=bucket, Key=item["jsonl"], Range=f"bytes={start}-{stop - 1}",
                         IfMatch=item["etag"])["Body"].read()
    return [json.loads(line) for line in body.decode().splitlines()]


def pack(bucket: str, item: dict) -> dict:
    s3 = aws.client("s3")
    records = item_records(s3, bucket, item)
    shard_writer.write_shards(s3, bucket, item["run_id"], item["split"], records, item["sizes"], item["first_shard"])
    return {"split": item["split"], "shards": len(item["sizes"]), "images": len(records)}


@logger.inject_lambda_context(log_event=False)
def handler(event: dict, context) -> dict:
    output = pack(os.environ["DATA_BUCKET"], event)
    logger.info("shards packed", extra={"run_id": event["run_id"], **output})
    return output
