"""Rescore Lambdas (training pipeline): after a promotion, the new model scores the last days' X-rays again.

``start_handler`` lists the current ``incoming/`` objects written in the last ``RESCORE_DAYS`` days (0: off),
copies each (server-side) to ``batch-input/<job>/<name>``, named by the upload's opaque name
(:mod:`lambdas.domain.source_names`), and starts a Batch Transform job of the newly deployed model over that
prefix, with per-record errors (``inference.py``); ``status_handler`` is polled by the state machine's wait loop
and, once the job has completed, compares each answer (``batch-output/<job>/<name>.out``) with the prediction
on record (``predictions/<name>.json``) and writes ``reports/<run>/rescore.csv``: the name, the label and model
on record, the new label and confidence, and whether the label changed.

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

from lambdas import aws, pseudonyms
from lambdas.domain import layout, source_names
from lambdas.domain.settings import Settings

logger = Logger(service="cxr-rescore")

RESCORE_FILE = "rescore.csv"
FIELDS = ("name", "previous_label", "previous_model", "new_label", "new_confidence", "changed", "error")
PER_RECORD_ERRORS = {"CXR_PER_RECORD_ERRORS": "1"}
"""The transform container's environment (``training_job/inference.py``): a bad record is answered, not fatal."""


class RescoreFailed(RuntimeError):
    """The transform job failed or stopped: the model serves; the re-score report is missing."""


def recent_keys(bucket: str, days: int, now: datetime) -> list[str]:
    since = now - timedelta(days=days)
    return sorted(obj["Key"] for page in aws.client("s3").get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=layout.INCOMING) for obj in page.get("Contents", [])
        if obj["LastModified"] >= since and not obj["Key"].endswith("/") and not source_names.is_pointer(obj["Key"]))


COPY_THREADS = 16
"""Copies in flight: a week of uploads (thousands) fits the function's timeout."""


def stage_copies(bucket: str, keys: list[str], prefix: str) -> None:
    """Copy each key to ``prefix<name>`` in the same bucket."""
    settings, s3 = Settings.from_env(), aws.client("s3")
    names = [pseudonyms.source_name(settings, bucket, key) for key in keys]

    def copy(pair: tuple[str, str]) -> None:
        key, name = pair
        s3.copy_object(Bucket=bucket, Key=prefix + name, CopySource={"Bucket": bucket, "Key": key},
                       MetadataDirective="REPLACE", ContentType="application/x-image")  # no user metadata copied

    with ThreadPoolExecutor(COPY_THREADS) as pool:
        list(pool.map(copy, zip(keys, names, strict=True)))


def job_name(prefix: str, run_id: str) -> str:
    """``<stage prefix>rescore-<run>``, cut to SageMaker's 63 characters (letters, digits and '-' only)."""
    clean = "".join(c if c.isalnum() else "-" for c in run_id).strip("-") or "run"
    return f"{prefix}rescore-{clean}"[:63].rstrip("-")


@logger.inject_lambda_context(log_event=False)
def start_handler(event: dict, context) -> dict:
    """Input ``{"run_id", "model_name"}``; output ``started`` and, when started, the job and its locations."""
    days, bucket = int(os.environ.get("RESCORE_DAYS", "0")), os.environ["INFERENCE_BUCKET"]
    if days <= 0:
        return {"started": False, "reason": "rescore_days is 0: no re-score"}
    keys = recent_keys(bucket, days, datetime.now(UTC))
    if not keys:
        return {"started": False, "reason": f"no X-rays under {layout.INCOMING} in the last {days} days"}
    run_id = str(event["run_id"])
    job = job_name(os.environ["RESOURCE_PREFIX"], run_id)
    staged = f"{layout.BATCH_INPUT}{job}/"
    stage_copies(bucket, keys, staged)
    output = f"s3://{bucket}/{layout.BATCH_OUTPUT}{job}/"
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
    return {"started": True, "job": job, "output": output, "input": f"s3://{bucket}/{staged}",
            "images": len(keys), "done": False}


@logger.inject_lambda_context(log_event=False)
def status_handler(event: dict, context) -> dict:
    """Input: ``start_handler``'s output plus ``run_id``; ``done`` once ``reports/<run>/rescore.csv`` is written."""
    described = aws.client("sagemaker").describe_transform_job(TransformJobName=event["job"])
    status = described["TransformJobStatus"]
    if status in ("Failed", "Stopped"):
        raise RescoreFailed(f"transform job {event['job']} {status.lower()}: {described.get('FailureReason', '')}")
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


def compare(event: dict) -> list[dict]:
    """One row per staged copy: the prediction on record against the new answer."""
    bucket, staged = layout.split_s3_uri(event["input"])
    names = sorted(obj["Key"][len(staged):] for page in aws.client("s3").get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=staged) for obj in page.get("Contents", []))
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
