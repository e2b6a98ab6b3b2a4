"""Time and peak memory of PrepareDataset, `cxr status` and upload-dataset's checksum pass at 10k, 50k, 200k objects.

Run: `nice -n 10 .venv/bin/python bench/pipeline_scale.py --linear [--counts 10000 50000 200000] [--steps ...]
[--code OTHER_CHECKOUT] [--json FILE]`. Not part of `make test`. Figures: bench/results/pipeline-scale.json.

For each count a moto server (the offline cloud's AWS APIs, in a process of its own) is seeded directly with
what ingest leaves behind for that many X-rays (``tests/seeded.py``): a source-state record per image, the
processed PNG and sidecar JSON, and the raw upload with its SHA-256. Going through ingest would take hours
at 200,000 here, and none of the measured steps reads anything else. Each step then runs in a fresh Python
process against that server, so its memory and CPU time are the step's own, not moto's (the wall time is
mostly moto's):

* ``prepare``: ``lambdas.prepare_dataset.prepare`` (the PrepareDataset function, first run: it draws the
  benchmark set), reading the dataset's records page by page, writing the manifests and returning the packing
  items; then, in a process of its own, one packing child (``lambdas.pack_shards.pack``, the PackShards Map
  state's function) on the largest item (``pack_child``). The seeded PNGs are 4 bytes, so the child's figures
  are its requests and CPU, not the transfer of real PNGs (about 50 KB each);
* ``status``: ``cxr status``'s object counts (``cxr.commands.status.counts``: four prefixes listed);
* ``checksums``: upload-dataset's resume check (``already_there``) for every file, all already uploaded:
  one listing, then a HeadObject with ``ChecksumMode=ENABLED`` per file, 8 workers.

Memory is the step process's peak resident set (``ru_maxrss``) less its resident set before the step (the
interpreter and imports), so it is what the step itself added. moto answers ListObjectsV2 with 100 keys a page
unless told otherwise; the server is told 1,000, AWS's page (ListObjectsV2 API reference). moto also sorts a
whole bucket or partition for every page, O(n^2) for a full listing; ``--linear`` (:func:`linear_pages`) serves
those pages from a sorted index instead, as S3 and DynamoDB do.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

from aws_requests import count_requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
for name, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_REGION": "us-east-1", "POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_NAMESPACE": "Cxr",
                    "MOTO_S3_DEFAULT_MAX_KEYS": "1000"}.items():
    os.environ[name] = value  # never reach AWS
os.environ.pop("AWS_PROFILE", None)

ACCOUNT, REGION, STAGE, DATASET, TABLE = "123456789012", "us-east-1", "bench", "scale", "cxr-bench-source-state"
STEPS = ("prepare", "status", "checksums")
WORKERS = 8


def raw_body(n: int) -> bytes:
    return f"x-ray {n:08d}".encode() * 4


def sha256_base64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


# --- the server process --------------------------------------------------------------------------
def serve(port: int, count: int, linear: bool) -> None:
    """moto on ``port``, seeded through its backends (minutes for 200,000 instead of hours through the API)."""
    import boto3
    from moto.dynamodb.models import dynamodb_backends
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.s3.models import s3_backends

    import seeded
    from infra import wiring
    from lambdas.domain import source_state

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    if linear:
        linear_pages()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    s3 = boto3.client("s3", endpoint_url=url)
    for role in (wiring.DATA, wiring.INFERENCE):
        s3.create_bucket(Bucket=wiring.BUCKETS[role].name(STAGE, ACCOUNT, REGION))
    spec = wiring.SOURCE_STATE_TABLE
    boto3.client("dynamodb", endpoint_url=url).create_table(
        TableName=TABLE, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": spec.partition_key, "KeyType": "HASH"},
                   {"AttributeName": spec.sort_key, "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in (spec.partition_key, spec.sort_key)])
    bucket = wiring.BUCKETS[wiring.DATA].name(STAGE, ACCOUNT, REGION)
    objects, table = s3_backends[ACCOUNT]["aws"], dynamodb_backends[ACCOUNT][REGION]
    started = time.perf_counter()
    for n in range(count):
        record = seeded.processed_record(bucket, DATASET, n)
        table.put_item(TABLE, seeded.table_item(record))
        image = record["image"]
        objects.put_object(bucket, image["processed_key"], b"\x89PNG", disable_notification=True)
        objects.put_object(bucket, image["metadata_key"], json.dumps(source_state.sidecar(record)).encode(),
                           disable_notification=True)
        body = raw_body(n)
        key = objects.put_object(bucket, seeded.raw_key(DATASET, n), body, disable_notification=True,
                                 checksum_value=sha256_base64(body))
        key.checksum_algorithm = "SHA256"
    print(json.dumps({"ready": url, "seed_s": round(time.perf_counter() - started, 1), "server_rss_mb": rss_mb()}),
          flush=True)
    sys.stdin.read()  # until the parent ends it


def linear_pages() -> None:
    """Make moto's two paged reads cost a page, not the whole bucket or partition, with the same answers.

    moto copies and sorts every key of a bucket for each ListObjectsV2 page and every item of a table for each
    Query page, so a full listing costs O(n^2): at 200,000 objects, hours here, where S3 and DynamoDB serve a page
    from their sorted index. With ``--linear`` the server answers from a sorted index kept per bucket and
    partition (rebuilt when their size changes), for the requests the measured steps make: ListObjectsV2 without
    a delimiter, and Query on the table's keys with ``begins_with`` on the sort key, forward.
    """
    import bisect
    import copy

    from moto.dynamodb.models import table as dynamo_table
    from moto.s3.models import FakeDeleteMarker, S3Backend

    names: dict[int, tuple[int, list[str]]] = {}
    original_list = S3Backend.list_objects_v2

    def list_objects_v2(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys):
        if delimiter:
            return original_list(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
        size, index = names.get(id(bucket), (-1, []))
        if size != len(bucket.keys):
            index = sorted(dict.keys(bucket.keys))
            names[id(bucket)] = (len(bucket.keys), index)
        after = self._pagination_tokens.get(continuation_token) if continuation_token else start_after
        position = bisect.bisect_right(index, after) if after else bisect.bisect_left(index, prefix or "")
        found = []
        while position < len(index) and index[position].startswith(prefix or "") and len(found) <= max_keys:
            key = bucket.keys[index[position]]
            if not isinstance(key, FakeDeleteMarker):
                found.append(key)
            position += 1
        return self._truncate_result(found, max_keys)

    S3Backend.list_objects_v2 = list_objects_v2

    ranges: dict[tuple[int, object], tuple[int, list, list]] = {}
    original_query = dynamo_table.Table.query

    def query(self, hash_key, range_comparison, range_objs, limit, exclusive_start_key, scan_index_forward,
              projection_expressions, index_name=None, consistent_read=False, filter_expression=None, **kwargs):
        legacy_filters = set(kwargs) - {"hash_key_conditions", "range_key_conditions"}
        if index_name or scan_index_forward is False or range_comparison != "BEGINS_WITH" or legacy_filters:
            return original_query(self, hash_key, range_comparison, range_objs, limit, exclusive_start_key,
                                  scan_index_forward, projection_expressions, index_name, consistent_read,
                                  filter_expression, **kwargs)
        partition = self.items.get(hash_key, {})
        size, index, keys = ranges.get((id(self), hash_key), (-1, [], []))
        if size != len(partition):
            index = sorted(partition.values(), key=lambda item: item.range_key.value)  # string sort keys
            keys = [item.range_key.value for item in index]
            ranges[(id(self), hash_key)] = (len(partition), index, keys)
        position = 0
        if exclusive_start_key:
            position = bisect.bisect_right(keys, exclusive_start_key[self.range_key_attr]["S"])
        results, result_size, last = [], 0, None
        for item in index[position:]:
            if len(results) == limit or result_size + item.size() > dynamo_table.RESULT_SIZE_LIMIT:
                last = self._get_last_evaluated_key(results[-1], None)
                break
            if item.range_key.compare(range_comparison, range_objs):
                results.append(item)
                result_size += item.size()
        results = copy.deepcopy(results)
        if filter_expression is not None:  # as moto applies it: to the page, after the page is cut
            results = [item for item in results if filter_expression.expr(item)]
        if projection_expressions:
            results = [r.project(projection_expressions) for r in results]
        return results, len(results), last

    dynamo_table.Table.query = query


# --- one step, in a fresh process -----------------------------------------------------------------
def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def run_step(step: str, url: str, count: int, code: Path | None, item: dict | None = None) -> None:
    os.environ["AWS_ENDPOINT_URL"] = url
    if code:  # another checkout's steps (the code before a change), with this one's seeding helpers
        sys.path[0] = str(code)
    import boto3

    import seeded
    from cxr import target
    from cxr.commands import status, upload_dataset
    from infra import wiring
    from lambdas import prepare_dataset

    deployment = target.Target(session=boto3.Session(), stage=STAGE, account=ACCOUNT, region=REGION, endpoint_url=url)
    bucket = deployment.bucket(wiring.DATA)
    if step == "checksums":
        items = [upload_dataset.Item(seeded.raw_key(DATASET, n), Path(f"/{n}"), len(raw_body(n)),
                                     sha256_base64(raw_body(n))) for n in range(count)]
    calls = count_requests()
    before, cpu_before = rss_mb(), cpu_s()
    started = time.perf_counter()
    if step == "prepare":
        out = prepare_dataset.prepare(TABLE, bucket, f"bench-{count}", DATASET)
        result = {"images": out["images"], "items": len(out["packing"]),
                  "largest_item": max(out["packing"], key=lambda i: sum(i["sizes"]))}
    elif step == "pack":
        from lambdas import pack_shards

        result = pack_shards.pack(bucket, item)
    elif step == "status":
        result = status.counts(deployment)
    else:
        held = upload_dataset.already_there(deployment.client("s3"), bucket, f"raw/{DATASET}/", items, WORKERS)
        result = {"already_there": len(held), "to_send": count - len(held)}
    wall, cpu = time.perf_counter() - started, cpu_s() - cpu_before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"step": step, "count": count, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                      "requests": dict(sorted(calls.items())), "peak_rss_mb": round(peak, 1),
                      "baseline_rss_mb": round(before, 1), "step_mb": round(peak - before, 1), "result": result}))


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- driver --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(count: int, steps: list[str], linear: bool, code: Path | None) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--counts", str(count),
                               *(["--linear"] if linear else [])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = json.loads(server.stdout.readline())
        print(f"{count}: seeded in {ready['seed_s']} s, moto holds {ready['server_rss_mb']:.0f} MB", file=sys.stderr,
              flush=True)
        figures = {"count": count, "linear_pages": linear, "seed_s": ready["seed_s"],
                   "moto_rss_mb": round(ready["server_rss_mb"])}
        for step in steps:
            line = subprocess.run([sys.executable, __file__, "--step", step, "--url", ready["ready"], "--counts",
                                   str(count), *(["--code", str(code)] if code else [])],
                                  check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            figures[step] = json.loads(line)
            print(f"{count}: {line}", file=sys.stderr, flush=True)
            if step == "prepare":  # one packing child on the largest item, in its own process
                item = json.dumps(figures[step]["result"]["largest_item"])
                line = subprocess.run([sys.executable, __file__, "--step", "pack", "--url", ready["ready"], "--counts",
                                       str(count), "--item", item, *(["--code", str(code)] if code else [])],
                                      check=True, capture_output=True, text=True).stdout.splitlines()[-1]
                figures[step]["pack_child"] = json.loads(line)
                print(f"{count}: {line}", file=sys.stderr, flush=True)
        return figures
    finally:
        server.terminate()  # freeing 200,000 objects at exit takes minutes
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--linear", action="store_true",
                        help="moto serves pages from a sorted index (linear_pages), as S3 and DynamoDB do")
    parser.add_argument("--code", type=Path, help="run the steps of another checkout (e.g. the code before a change)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--step", choices=(*STEPS, "pack"), help=argparse.SUPPRESS)
    parser.add_argument("--item", type=json.loads, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.counts[0], args.linear)
    if args.step:
        return run_step(args.step, args.url, args.counts[0], args.code, args.item)
    results = {"machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start",
               "code": str(args.code or ROOT), "runs": [measure(count, args.steps, args.linear, args.code)
                                                      for count in args.counts]}
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
