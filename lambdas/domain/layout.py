"""Bucket key layout: the one place that names prefixes, shared by Lambdas, CDK stacks and local mode."""

from __future__ import annotations

from pathlib import PurePosixPath

from .labels import LabelInfo, describe

# data bucket
RAW = "raw/"
PROCESSED = "processed/"
QUARANTINE = "quarantine/"
MANIFESTS = "manifests/"
BENCHMARKS = f"{MANIFESTS}benchmarks/"
"""Each dataset's fixed benchmark set (``lambdas/domain/benchmark.py``), written once."""
MODELS = "models/"
REPORTS = "reports/"


def report_key(run_id: str, name: str) -> str:
    """``reports/<run>/<name>``: what the Evaluate step writes for a pipeline run (``metrics.json``,
    ``gate.json``, and ``report.html``, the model's evaluation report that `cxr status` links to)."""
    return f"{REPORTS}{run_id}/{name}"


REPORT_HTML = "report.html"
SERVING = "serving/"
"""Each run's lean serving copy (``lambdas.domain.serving_copy``): what ``endpoint_mode=lambda`` loads."""


def serving_key(run_id: str) -> str:
    """``serving/<run>/model.tar``: written by the Evaluate step, read by the predict function."""
    return f"{SERVING}{run_id}/model.tar"


CHECKPOINTS = "checkpoints/"
# inference bucket
INCOMING = "incoming/"
PREDICTIONS = "predictions/"
REJECTED = "rejected/"
REVIEW = "review/"
"""Review copies of X-rays, named by content hash (``lambdas.review_data``): what presigned URLs show."""
# inference bucket, asynchronous endpoints (endpoint_mode=async)
ASYNC_INPUT = "async-input/"
"""The normalised PNG an asynchronous endpoint reads (its ``InputLocation``): the model role reads only this."""
ASYNC_REQUESTS = "async-requests/"
"""What the predict function knew when it submitted a request (source object, endpoint), for the completion."""
ASYNC_OUTPUT = "async-output/"
"""The endpoint configuration's ``S3OutputPath``: each result lands here and triggers the completion."""
ASYNC_FAILURES = f"{ASYNC_OUTPUT}failures/"
"""The configuration's ``S3FailurePath``: under the output prefix, so a failure reaches the completion too."""
# inference bucket, Batch Transform (`cxr batch-predict`)
BATCH_INPUT = "batch-input/"
"""A local folder's X-rays, uploaded for one batch job (``batch-input/<job>/...``): the model role reads them."""
BATCH_OUTPUT = "batch-output/"
"""Each batch job's ``S3OutputPath`` (``batch-output/<job>/``): one ``<input>.out`` JSON per X-ray."""
BATCH_OUTPUT_SUFFIX = ".out"
"""What Batch Transform appends to an input object's name in its output path."""

RESULTS_DICOM = "results-dicom/"
"""Predictions on DICOM input as DICOM SR (``lambdas/domain/dicom_sr.py``): the one output that carries patient
identity (a PACS files results by it), so no role reads it but the ones the stacks grant it to."""

ERROR_SUFFIX = ".error.json"
OVERLAY_SUFFIX = ".overlay.png"
EXPLAIN_METADATA = "cxr-explain"
"""User metadata of an ``incoming/`` upload (``x-amz-meta-cxr-explain: true``) asking for its overlay."""
PATIENT_METADATA = "cxr-patient-id"
"""User metadata of a ``raw/`` upload: the patient id a CSV manifest's ``patient_id`` column gave it. Ingest
records only its keyed pseudonym (``lambdas/domain/deid.py``), so splits group by it and it never leaves raw/."""


class KeyLayoutError(ValueError):
    """A key that does not follow ``raw/<dataset>/[split/]<LABEL>/<file>``."""


def parse_raw_key(key: str) -> tuple[str, LabelInfo]:
    """Dataset name and label information of an uploaded object's key."""
    if not key.startswith(RAW):
        raise KeyLayoutError(f"the key is not under {RAW}")
    parts = key[len(RAW):].split("/")
    if len(parts) < 2 or not parts[0]:
        raise KeyLayoutError("the key has no dataset folder: expected raw/<dataset>/<LABEL>/<file>")
    dataset, rest = parts[0], parts[1:]
    if not rest[-1]:
        raise KeyLayoutError("the key is a folder marker, not a file")
    return dataset, describe(rest)


def processed_key(dataset: str, label: str, image_id: str) -> str:
    return f"{PROCESSED}{dataset}/{label}/{image_id}.png"


def processed_metadata_key(dataset: str, label: str, image_id: str) -> str:
    return f"{PROCESSED}{dataset}/{label}/{image_id}.json"


def quarantine_key(scope: str, source_name: str) -> str:
    """``quarantine/raw/<dataset>/<name>.error.json``: named by the upload's opaque name
    (``lambdas/domain/source_names.py``), never its key; ``scope`` is ``raw/<dataset>`` (``raw`` without one)."""
    return f"{QUARANTINE}{scope}/{source_name}{ERROR_SUFFIX}"


def prediction_key(source_name: str) -> str:
    """``predictions/<name>.json``, named by the ``incoming/`` upload's opaque name, never its key."""
    return f"{PREDICTIONS}{source_name}.json"


def structured_report_key(source_name: str) -> str:
    """The SR carries identity in its body, not in its key: the prediction record that points at it must not."""
    return f"{RESULTS_DICOM}{source_name}.sr.dcm"


def overlay_key(source_name: str) -> str:
    """The class-activation overlay PNG, beside the prediction JSON."""
    return f"{PREDICTIONS}{source_name}{OVERLAY_SUFFIX}"


def rejected_key(source_name: str) -> str:
    return f"{REJECTED}{source_name}{ERROR_SUFFIX}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``; the key may be empty (a bucket-wide prefix)."""
    scheme, _, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if scheme != "s3" or not bucket:
        raise ValueError(f"not an S3 URI: {uri!r}")
    return bucket, key


def file_name(key: str) -> str:
    return PurePosixPath(key).name
