"""Rescore Lambdas (training pipeline): after a promotion, the new model scores the last days' X-rays again.

``start_handler`` lists the current ``incoming/`` objects written in the last ``RESCORE_DAYS`` days (0: off),
copies each (server-side) to ``batch-input/<job>/<name>``, named by the upload's opaque name
(:mod:`lambdas.domain.source_names`), and starts a Batch Transform job of the newly deployed model over that
prefix, with per-record errors (``inference.py``); ``status_handler`` is polled by the state machine's wait loop
and, once the job has completed, compares each answer (``batch-output/<job>/<name>.out``) with the prediction
on record (``predictions/<name>.json``) and writes ``reports/<run>/rescore.csv``: the name, the label and model
on record, the new label and confidence, and whether the label changed.

With ``endpoint_mode=lambda`` there is no SageMaker model for a transform job to run: ``start_handler`` stages
the same copies and returns them in batches of names (:func:`batches`), the pipeline's ``ScoreRecent`` Map state
runs ``batch_handler`` on each (the approved package, loaded inside the function as the predict function loads
its champion, answers every copy where the transform job would have), and ``status_handler`` writes the report
at once.

Why copies. Batch Transform names each answer after its input object, so a manifest of ``incoming/`` keys
would carry the uploads' file names (patient names and MRNs, in hospital exports) into ``batch-input/`` and
``batch-output/``; copies under names keep every key inside ``incoming/``, and the model role reads
``batch-input/`` only. A copy is one request per X-ray, billed as a PUT; the prefix expires with ``batch-input/``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from lambdas import aws, batch_requests, pseudonyms, served_model
from lambdas.domain import layout, source_names
from lambdas.domain.settings import Settings

logger = Logger(service="cxr-rescore")

RESCORE_FILE = "rescore.csv"
FIELDS = ("name", "previous_label", "previous_model", "new_label", "new_confidence", "changed", "error")
PER_RECORD_ERRORS = {"CXR_PER_RECORD_ERRORS": "1"}
"""The transform container's environment (``training_job/inference.py``): a bad record is answered, not fatal."""
IN_FUNCTION = "function"
"""``scorer`` of a re-score run by ``batch_handler`` (``endpoint_mode=lambda``); otherwise a transform job."""
BATCH_IMAGES = 200
"""Copies a ``batch_handler`` invocation scores, one after another. The normaliser and the model take 6 to 20 ms
an X-ray on one thread (``bench/latency.py``: the demo's Lite0 at 128 px, the default Lite2 at 160); a GET and a
PUT, assumed 20 to 50 ms each on AWS (not measured here), make it about 50 to 120 ms, 10 to 25 s a batch, far
inside the function's timeout even for a batch of uploads near the 30 MB cap."""
MAX_BATCHES = 1000
"""Batches at most, larger ones past it: an inline Map writes about 7 history events an item, under the
execution's 25,000 (Step Functions Developer Guide, "Using Map state in Inline mode"), and 1,000 items of about
100 bytes stay far under its 256 KiB of state data."""


class RescoreFailed(RuntimeError):
    """The transform job failed or stopped: the model serves; the re-score report is missing."""


def recent_keys(bucket: str, days: int, now: datetime) -> list[str]:
    since = now - timedelta(days=days)
    return sorted(obj["Key"] for page in aws.client("s3").get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=layout.INCOMING) for obj in page.get("Contents", [])
        if obj["LastModified"] >= since and not obj["Key"].endswith("/") and not source_names.is_pointer(obj["Key"]))


COPY_THREADS = 16
"""Copies in flight: a week of uploads (thousands) fits the function's timeout."""


def stage_copies(bucket: str, keys: list[str], prefix: str) -> list[str]:
    """Copy each key to ``prefix<name>`` in the same bucket; returns the names."""
    settings, s3 = Settings.from_env(), aws.client("s3")
    names = [pseudonyms.source_name(settings, bucket, key) for key in keys]

    def copy(pair: tuple[str, str]) -> None:
        key, name = pair
        s3.copy_object(Bucket=bucket, Key=prefix + name, CopySource={"Bucket": bucket, "Key": key},
                       MetadataDirective="REPLACE", ContentType="application/x-image")  # no user metadata copied

    with ThreadPoolExecutor(COPY_THREADS) as pool:
        list(pool.map(copy, zip(keys, names, strict=True)))
    return names


def job_name(prefix: str, run_id: str) -> str:
    """``<stage prefix>rescore-<run>``, cut to SageMaker's 63 characters (letters, digits and '-' only)."""
    clean = "".join(c if c.isalnum() else "-" for c in run_id).strip("-") or "run"
    return f"{prefix}rescore-{clean}"[:63].rstrip("-")


def batches(names: list[str], size: int = BATCH_IMAGES, most: int = MAX_BATCHES) -> list[dict]:
    """The staged names, sorted as S3 lists them, cut into at most ``most`` runs of at least ``size``: each the
    names after ``start_after`` ("" for the first) up to ``last`` (None for the last run: to the end), so the Map's
    items stay small whatever the count, and a copy that an earlier attempt of the same start staged falls in a
    batch too."""
    ordered = sorted(set(names), key=str.encode)  # S3 lists keys in UTF-8 byte order
    size = max(size, -(-len(ordered) // most))
    return [{"start_after": ordered[i - 1] if i else "",
             "last": ordered[i + size - 1] if i + size < len(ordered) else None}
            for i in range(0, len(ordered), size)]


@logger.inject_lambda_context(log_event=False)
def start_handler(event: dict, context) -> dict:
    """Input ``{"run_id", "model_name"}`` (with ``endpoint_mode=lambda``: ``{"run_id", "model_package_arn"}``);
    output ``started`` and, when started, the job's name and locations (in lambda mode, its ``batches``)."""
    days, bucket = int(os.environ.get("RESCORE_DAYS", "0")), os.environ["INFERENCE_BUCKET"]
    if days <= 0:
        return {"started": False, "reason": "rescore_days is 0: no re-score"}
    keys = recent_keys(bucket, days, datetime.now(UTC))
    if not keys:
        return {"started": False, "reason": f"no X-rays under {layout.INCOMING} in the last {days} days"}
    run_id = str(event["run_id"])
    job = job_name(os.environ["RESOURCE_PREFIX"], run_id)
    staged = f"{layout.BATCH_INPUT}{job}/"
    names = stage_copies(bucket, keys, staged)
    output = f"s3://{bucket}/{layout.BATCH_OUTPUT}{job}/"
    located = {"job": job, "output": output, "input": f"s3://{bucket}/{staged}", "images": len(keys)}
    if os.environ.get("ENDPOINT_MODE") == "lambda":
        logger.info("re-score staged", extra={"run_id": run_id, "job": job, "images": len(keys), "days": days})
        return {"started": True, **located, "scorer": IN_FUNCTION, "package": str(event["model_package_arn"]),
                "batches": batches(names), "done": False}
    try:
        aws.client("sagemaker").create_transform_job(
            TransformJobName=job, ModelName=str(event["model_name"]), BatchStrategy="SingleRecord",
            MaxPayloadInMB=32, Environment=PER_RECORD_ERRORS,
            TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                            "S3Uri": f"s3://{bucket}/{staged}"}},
                            "ContentType": "application/x-image", "SplitType": "None"},
            TransformOutput={"S3OutputPath": output, "Accept": "application/json", "AssembleWith": "None"},
            TransformResources={"InstanceType": os.environ.get("RESCORE_INSTANCE_TYPE", "ml.c6i.large"),
                                "InstanceCount": 1})
    except ClientError as exc:  # a retried attempt: the job exists
        if "already exists" not in str(exc) and "must be unique" not in str(exc):
            raise
    logger.info("re-score started", extra={"run_id": run_id, "job": job, "images": len(keys), "days": days})
    return {"started": True, **located, "done": False}


@logger.inject_lambda_context(log_event=False)
def batch_handler(event: dict, context) -> dict:
    """One item of ``ScoreRecent``: ``{"package", "input", "start_after", "last"}``. The package answers each
    staged copy of the batch where a transform job would (``batch_requests.answer``); a retried batch writes the
    same answers again."""
    bucket, staged = layout.split_s3_uri(str(event["input"]))
    served = served_model.package(str(event["package"]))
    max_bytes = Settings.from_env().max_upload_bytes
    outcomes = [batch_requests.answer(bucket, key, max_bytes, served)["status"]
                for key in _listed(bucket, staged, str(event["start_after"]), event["last"])]
    logger.info("re-score batch answered", extra={"answered": len(outcomes), "rejected": outcomes.count("rejected")})
    return {"answered": len(outcomes), "rejected": outcomes.count("rejected")}


@logger.inject_lambda_context(log_event=False)
def status_handler(event: dict, context) -> dict:
    """Input: ``start_handler``'s output plus ``run_id``; ``done`` once ``reports/<run>/rescore.csv`` is written.
    A re-score in the function (``scorer``) is complete when this runs: its Map state ran every batch first."""
    status = "Completed"
    if event.get("scorer") != IN_FUNCTION:
        described = aws.client("sagemaker").describe_transform_job(TransformJobName=event["job"])
        status = described["TransformJobStatus"]
        if status in ("Failed", "Stopped"):
            raise RescoreFailed(f"transform job {event['job']} {status.lower()}: "
                                f"{described.get('FailureReason', '')}")
        if status != "Completed":
            return {**event, "status": status, "done": False}
    rows = compare(event)
    body = io.StringIO()
    writer = csv.DictWriter(body, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    data_bucket, key = os.environ["DATA_BUCKET"], layout.report_key(str(event["run_id"]), RESCORE_FILE)
    aws.client("s3").put_object(Bucket=data_bucket, Key=key, Body=body.getvalue().encode(), ContentType="text/csv")
    changed = sum(1 for r in rows if r["changed"] == "true")
    logger.info("re-score written", extra={"job": event["job"], "scored": len(rows), "changed": changed})
    return {**event, "status": status, "done": True, "scored": len(rows), "changed": changed,
            "report": f"s3://{data_bucket}/{key}"}


def _listed(bucket: str, prefix: str, start_after: str, last: str | None) -> list[str]:
    """The keys ``prefix<name>`` with ``start_after < name <= last`` (no upper bound: ``last`` None), in S3's order."""
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, **({"StartAfter": prefix + start_after} if start_after else {}))
    keys = []
    for page in pages:
        for obj in page.get("Contents", []):
            if last is not None and obj["Key"][len(prefix):].encode() > last.encode():
                return keys
            keys.append(obj["Key"])
    return keys


def compare(event: dict) -> list[dict]:
    """One row per staged copy: the prediction on record against the new answer."""
    bucket, staged = layout.split_s3_uri(event["input"])
    names = [key[len(staged):] for key in _listed(bucket, staged, "", None)]  # S3's order: sorted
    out_bucket, out_prefix = layout.split_s3_uri(event["output"])
    rows = []
    for name in names:
        new = (_json(out_bucket, f"{out_prefix}{name}{layout.BATCH_OUTPUT_SUFFIX}")
               or {"error": "the job wrote no answer"})
        old = _json(bucket, layout.prediction_key(name)) or {}
        new_label = new.get("label")
        rows.append({"name": name, "previous_label": old.get("label", ""), "previous_model": old.get("model_id", ""),
                     "new_label": new_label or "", "new_confidence": new.get("confidence", ""),
                     "changed": "true" if new_label and old.get("label") and new_label != old["label"] else "false",
                     "error": new.get("error", "")})
    return rows


def _json(bucket: str, key: str) -> dict | None:
    try:
        return json.loads(aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as exc:
        if aws.error_code(exc) in ("NoSuchKey", "404"):
            return None
        raise
