"""Ingest at scale on the offline cloud: N uploads, each through S3's notification to the real preprocess function.

Run: `nice -n 10 .venv/bin/python bench/ingest_scale.py [--uploads 1000 5000 10000] [--json FILE]`. Not part of
`make test`.

The offline cloud (``cxr.local.cloud``: moto, the S3 triggers, the functions' environments, dead-letter
queues) is provisioned as `make demo` does; each upload is a 256x208 grey PNG of distinct pixels under
``raw/scale/train/<LABEL>/`` (Kermany names: patient ids, sub-types), whose PutObject invokes the preprocess
function as S3 does (asynchronous invocation, retries, then the dead-letter queue). The offline cloud runs
one invocation at a time, so this measures the cost of one ingest and whether it grows with what the table
and bucket already hold (it must not: an upload's work touches its own key, its pixels' group, and nothing
listed), not AWS's concurrency. Printed: wall seconds per upload for each tenth of the run, the process's
peak memory, the outcomes in the source-state table, and the dead-letter queue's depth.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from aws_requests import count_requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
for name, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_REGION": "us-east-1", "POWERTOOLS_LOG_LEVEL": "WARNING"}.items():
    os.environ[name] = value  # never reach AWS
os.environ.pop("AWS_PROFILE", None)

DATASET = "scale"


def upload(n: int) -> tuple[str, bytes]:
    """Image ``n`` of patient ``n // 2``, Kermany's names, distinct pixels."""
    import corpus
    import seeded

    return seeded.raw_key(DATASET, n).replace(".jpeg", ".png"), corpus.png(256, 208, seed=n)


def measure(count: int) -> dict:
    import boto3

    from cxr.local import cloud as local_cloud
    from infra import wiring
    from infra.config import Config
    from lambdas.domain import source_state

    bodies = [upload(n) for n in range(count)]  # made before the clock starts
    config = Config.demo(stage="scale")
    with tempfile.TemporaryDirectory() as workdir, local_cloud.start(config, Path(workdir)) as cloud:
        s3 = boto3.client("s3", region_name=local_cloud.REGION)
        bucket = cloud.names.bucket(wiring.DATA)
        calls = count_requests()
        tenths, started, mark = [], time.perf_counter(), time.perf_counter()
        for n, (key, body) in enumerate(bodies, 1):
            s3.put_object(Bucket=bucket, Key=key, Body=body)  # returns once the function has run
            if n % max(1, count // 10) == 0:
                now = time.perf_counter()
                tenths.append(round((now - mark) / max(1, count // 10) * 1000, 1))
                mark = now
        wall = time.perf_counter() - started
        calls["PutObject"] -= count  # the uploads themselves
        per_upload = {operation: round(n / count, 2) for operation, n in sorted(calls.items()) if n}
        table = cloud.names.table(wiring.SOURCE_STATE_TABLE)
        pages = boto3.client("dynamodb", region_name=local_cloud.REGION).get_paginator("query").paginate(
            TableName=table, KeyConditionExpression="pk = :pk AND begins_with(sk, :src)",
            ExpressionAttributeValues={":pk": {"S": source_state.dataset_partition(bucket, DATASET)},
                                       ":src": {"S": source_state.SOURCE_PREFIX}})
        outcomes: dict[str, int] = {}
        for page in pages:
            for item in page["Items"]:
                outcome = item.get("outcome", {}).get("S", "pending")
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        sqs = boto3.client("sqs", region_name=local_cloud.REGION)
        queue = sqs.get_queue_url(QueueName=cloud.names.dead_letter_queue(wiring.PREPROCESS))["QueueUrl"]
        dead = int(sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])[
            "Attributes"]["ApproximateNumberOfMessages"])
    return {"uploads": count, "wall_s": round(wall, 1), "uploads_per_s": round(count / wall, 1),
            "ms_per_upload_by_tenth": tenths, "requests_per_upload": per_upload, "outcomes": outcomes,
            "dead_letters": dead,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "load_average_after": round(os.getloadavg()[0], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    runs = []
    for count in args.uploads:
        runs.append(measure(count))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    results = {"machine": f"{os.cpu_count()} cores", "runs": runs}
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
