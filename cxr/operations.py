"""What the `cxr` commands do to a deployment, through the AWS APIs only (a real account or the offline cloud)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from lambdas.domain import layout

T = TypeVar("T")
R = TypeVar("R")


def dataset_files(folder: Path) -> list[Path]:
    """Every visible file under ``folder``; ingest decides what each one is."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))


def upload_dataset(s3, bucket: str, folder: Path, dataset: str, workers: int = 4,
                   progress: Callable[[int, int], None] = lambda done, total: None) -> list[str]:
    """Upload ``folder`` under ``raw/<dataset>/`` keeping its layout (split and label folders)."""
    items = [(path, f"{layout.RAW}{dataset}/{path.relative_to(folder).as_posix()}") for path in dataset_files(folder)]
    upload_files(s3, bucket, items, workers, progress)
    return [key for _, key in items]


def sha256_base64(data: bytes) -> str:
    """A SHA-256 digest in the form S3 takes and returns it (``ChecksumSHA256``)."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def upload_files(s3, bucket: str, items: list[tuple[Path, str]], workers: int,
                 progress: Callable[[int, int], None] = lambda done, total: None,
                 metadata: Mapping[str, dict[str, str]] | None = None) -> None:
    """Parallel single-part uploads (X-rays are under the 30 MiB cap), each with its SHA-256.

    S3 verifies the digest against what it received (BadDigest otherwise) and stores it as the
    object's full-object ``ChecksumSHA256``, which ``HeadObject(ChecksumMode="ENABLED")`` returns
    whatever the bucket's encryption: the ETag is no MD5 under SSE-KMS, the checksum is the data's.
    ``metadata`` gives some keys user metadata (a manifest's patient ids).
    """

    def upload(item: tuple[Path, str]) -> None:
        path, key = item
        body = path.read_bytes()
        extra = {"Metadata": metadata[key]} if metadata and key in metadata else {}
        s3.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256", ChecksumSHA256=sha256_base64(body),
                      **extra)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for done, _ in enumerate(bounded_map(pool, upload, items, 4 * max(1, workers)), 1):
            progress(done, len(items))


def bounded_map(pool: Executor, function: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """``pool.map`` keeping at most ``window`` calls in flight, results in order.

    ``Executor.map`` submits every item before yielding the first result: a future per item (about 1.6 KB
    each, 320 MB for 200,000 files), all at once. This one submits the next item as each result is taken.
    """
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@dataclass(frozen=True)
class IngestSummary:
    processed: int
    quarantined: dict[str, str]
    """Original key -> reason."""


def ingest_summary(s3, bucket: str, dataset: str, raw_keys: list[str], name_of: Callable[[str], str]) -> IngestSummary:
    """How ingest dealt with the given uploads: processed images and quarantine reasons (``name_of``: a key's
    opaque name, ``cxr.source_names.namer``)."""
    paginator = s3.get_paginator("list_objects_v2")
    processed = sum(1 for page in paginator.paginate(Bucket=bucket, Prefix=f"{layout.PROCESSED}{dataset}/")
                    for obj in page.get("Contents", []) if obj["Key"].endswith(".png"))
    quarantined = {}
    for key in raw_keys:
        error_key = layout.quarantine_key(f"{layout.RAW}{dataset}", name_of(key))
        try:
            record = json.loads(s3.get_object(Bucket=bucket, Key=error_key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            continue
        quarantined[key] = f"{record['reason']}: {record['message']}"
    return IngestSummary(processed, quarantined)


def follow_execution(sfn, execution_arn: str, poll_seconds: float = 0.5,
                     on_poll: Callable[[], None] = lambda: None) -> Iterator[dict]:
    """Yield the execution's history events as they happen, until it ends; ``on_poll`` runs between polls."""
    seen = 0
    while True:
        on_poll()
        status = sfn.describe_execution(executionArn=execution_arn)["status"]
        events = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
        yield from events[seen:]
        seen = len(events)
        if status != "RUNNING":
            return
        time.sleep(poll_seconds)


def predict_files(s3, bucket: str, files: list[Path], name_of: Callable[[str], str], timeout_s: float = 120.0,
                  prefix: str = "", explain: bool = False) -> dict[Path, dict]:
    """Upload each file to a key of its own (``incoming/<prefix><n>/<name>``) and wait for that version's outcome.

    Two files with one name never share a key, and an outcome counts only when it names the version
    this call uploaded (another upload to the key would have its own). Outcomes are found by the key's
    opaque name (``name_of``, ``cxr.source_names.namer``), as the predict function writes them.
    ``explain``: each upload asks the predict function for its class-activation overlay
    (``predictions/<name>.overlay.png``).
    """
    pending = {}
    metadata = {layout.EXPLAIN_METADATA: "true"} if explain else {}
    for index, path in enumerate(files):
        key = f"{layout.INCOMING}{prefix}{index:04d}/{path.name}"
        version = s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), Metadata=metadata).get("VersionId")
        pending[path] = (name_of(key), version)
    results: dict[Path, dict] = {}
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for path, (name, version) in list(pending.items()):
            outcomes = ((layout.prediction_key(name), "predicted"), (layout.rejected_key(name), "rejected"))
            for result_key, status in outcomes:
                try:
                    record = json.loads(s3.get_object(Bucket=bucket, Key=result_key)["Body"].read())
                except s3.exceptions.NoSuchKey:
                    continue
                if version is not None and record.get("source", {}).get("version_id") != version:
                    continue
                results[path] = {"status": status, "key": result_key, **record}
                del pending[path]
                break
        if pending:
            time.sleep(0.5)
    for path, (name, _) in pending.items():
        results[path] = {"status": "timeout", "key": layout.prediction_key(name)}
    return results


def read_overlay(s3, bucket: str, prediction: dict, timeout_s: float = 10.0) -> bytes | None:
    """The overlay PNG a prediction names, or None; an asynchronous one is written just after its JSON."""
    explanation = prediction.get("explanation")
    if not explanation:
        return None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return s3.get_object(Bucket=bucket, Key=explanation["overlay_key"])["Body"].read()
        except s3.exceptions.NoSuchKey:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)
