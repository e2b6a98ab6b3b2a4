"""Batch scoring with ``endpoint_mode=lambda`` (`cxr batch-predict`): the predict function answers one staged object.

In this mode there is no SageMaker model for a Batch Transform job to run. The command stages the files as it
does for one (``batch-input/<job>/<position>``: positions, never file names, in the bucket's keys) and invokes
the predict function once an object with ``{"batch": {"key": ...}}``. The function answers as a transform job's
container does, with the served handler's JSON, or ``{"status": "rejected", "error": ...}`` for an image it
cannot take (``CXR_PER_RECORD_ERRORS``, ``training_job/inference.py``), and writes the answer where Batch
Transform would, ``batch-output/<job>/<position>.out``, so the command collects either kind of job the same way.
Like a transform job it records nothing else: no prediction record, review task or audit item.
"""

from __future__ import annotations

from lambdas import aws, served_model
from lambdas.domain import imaging, layout, uploads

EVENT_FIELD = "batch"
"""A direct invocation carrying this field is a batch request, not an S3 event."""


class BatchRequestError(ValueError):
    """The request names no staged object: only ``batch-input/<job>/<position>`` keys are answered."""


def output_key(input_key: str) -> str:
    """``batch-input/<job>/<position>`` -> ``batch-output/<job>/<position>.out``."""
    parts = input_key.removeprefix(layout.BATCH_INPUT).split("/")
    if not input_key.startswith(layout.BATCH_INPUT) or len(parts) != 2 or not all(parts):
        raise BatchRequestError(f"not a staged batch input: {input_key!r}")
    return f"{layout.BATCH_OUTPUT}{parts[0]}/{parts[1]}{layout.BATCH_OUTPUT_SUFFIX}"


def request(input_key: str) -> dict:
    """The predict function's event for one staged object (what `cxr batch-predict` sends)."""
    return {EVENT_FIELD: {"key": input_key}}


def answer(bucket: str, key: str, max_upload_bytes: int, served: served_model.Served) -> dict:
    """Score ``key`` with ``served`` (the stage's champion; a re-score's newly approved package) and write the
    answer beside the job's other outputs."""
    target = output_key(key)
    s3 = aws.client("s3")
    response = s3.get_object(Bucket=bucket, Key=key)
    try:
        imaging.check_upload_size(response["ContentLength"], max_upload_bytes)
        image, _ = uploads.normalise(response["Body"].read())
    except imaging.RejectedImage as exc:  # the endpoint handler's wording (inference.input_fn)
        body, status = served.refusal(f"{exc.code}: {exc.message}"), "rejected"
    else:
        body, status = served.answer(image, explain=False), "predicted"
    s3.put_object(Bucket=bucket, Key=target, Body=body, ContentType="application/json")
    return {"status": status, "output": target}
