"""Predict Lambda: S3 ``incoming/`` uploads -> endpoint -> ``predictions/<key>.json`` and a DynamoDB record.

The image goes through the one normaliser before the endpoint sees it (bad input gets
``rejected/<key>.error.json``, the original stays). The endpoint's name is read from SSM, so a
newly deployed model needs no change here. Each (bucket, key, version) is predicted once:
Powertools idempotency on DynamoDB absorbs duplicate deliveries, and S3 sequencers decide which
version's prediction ``predictions/<key>.json`` shows when events arrive out of order.
Throttling and endpoint errors are retried by botocore, then raised so Lambda retries the event
and finally hands it to the on-failure destination.

An asynchronous endpoint (``ENDPOINT_MODE=async``) takes only ``InvokeEndpointAsync`` with the input
in S3: the PNG goes to ``async-input/``, what the record needs to ``async-requests/``, and
:mod:`lambdas.complete_prediction` writes the same record when the result lands in ``async-output/``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from datetime import UTC, datetime
from decimal import Decimal

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

from lambdas import aws, s3io
from lambdas.domain import imaging, layout
from lambdas.domain.settings import Settings
from lambdas.s3io import SourceObject

logger = Logger(service="cxr-predict")
metrics = Metrics(namespace="CxrServerless", service="cxr-predict")
IDEMPOTENCY = IdempotencyConfig(event_key_jmespath="[bucket, key, version_id]", expires_after_seconds=7 * 24 * 3600)
ENDPOINT_CACHE_SECONDS = 60
ENDPOINT_ERROR_CODES = frozenset({"ModelError", "ModelNotReadyException", "InternalDependencyException"})
RESPONSE_FIELDS = ("label", "confidence", "probabilities", "pneumonia_probability", "model_id")
ASYNC_RESULT_SUFFIX = ".out"


class EndpointResponseError(RuntimeError):
    """The endpoint answered with something that is not a prediction: retried, then dead-lettered."""


@metrics.log_metrics
@logger.inject_lambda_context(log_event=False)
@event_source(data_class=S3Event)
def handler(event: S3Event, context) -> dict:
    settings = Settings.from_env()
    settings.require("predictions_table", "idempotency_table", "endpoint_parameter")
    IDEMPOTENCY.register_lambda_context(context)
    outcomes = {"predicted": 0, "submitted": 0, "rejected": 0, "skipped": 0, "transient": 0}
    for record in event.records:
        source = SourceObject.from_record(record)
        if not record.event_name.startswith("ObjectCreated") or not source.key.startswith(layout.INCOMING):
            outcomes["skipped"] += 1
            continue
        try:
            predict_once = _idempotent_predict(settings.idempotency_table)
            result = predict_once(source=source.describe() | {"sequencer": source.sequencer})
        except Exception as exc:
            if not _retriable(exc):
                raise
            outcomes["transient"] += 1
            logger.warning("prediction will be retried", key_ref=source.ref, error=type(exc).__name__)
            continue
        outcomes[result["status"]] += 1
    metrics.add_metric(name="Predictions", unit=MetricUnit.Count, value=outcomes["predicted"])
    metrics.add_metric(name="PredictionsRejected", unit=MetricUnit.Count, value=outcomes["rejected"])
    if outcomes["transient"]:
        raise aws.TransientError(f"{outcomes['transient']} record(s) failed transiently; completed ones are idempotent")
    return outcomes


@functools.cache
def _idempotent_predict(table_name: str):
    """Built on first use, so the DynamoDB client is created inside the invocation's environment."""
    store = DynamoDBPersistenceLayer(table_name=table_name, boto3_client=aws.client("dynamodb"))
    return idempotent_function(data_keyword_argument="source", config=IDEMPOTENCY, persistence_store=store)(
        predict_object
    )


def predict_object(source: dict) -> dict:
    """Normalise, predict and record one uploaded object; returns a small status summary."""
    settings = Settings.from_env()
    obj = SourceObject(source["bucket"], source["key"], source["size"], source["version_id"], source["sequencer"])
    started, started_at = time.perf_counter(), time.time()
    try:
        imaging.check_upload_size(obj.size, settings.max_upload_bytes)
        image = imaging.normalise(s3io.download(obj.bucket, obj.key, obj.version_id))
    except imaging.RejectedImage as exc:
        document = {"source": obj.describe(), "reason": exc.code, "message": exc.message}
        s3io.put_json_if_newest(obj.bucket, layout.rejected_key(obj.key), document, obj.sequencer)
        logger.info("rejected", key_ref=obj.ref, reason=exc.code, outcome="rejected")
        return {"status": "rejected", "reason": exc.code}
    endpoint = parameters.get_parameter(settings.endpoint_parameter, max_age=ENDPOINT_CACHE_SECONDS)
    if os.environ.get("ENDPOINT_MODE") == "async":
        submit_async(obj, endpoint, image.png, started_at)
        logger.info("submitted", key_ref=obj.ref, outcome="submitted")
        return {"status": "submitted"}
    body, endpoint_ms = invoke_endpoint(endpoint, image.png)
    latency = {"endpoint": endpoint_ms, "total": round(1000 * (time.perf_counter() - started), 1)}
    prediction = record_prediction(obj, parse_answer(body), endpoint, settings, latency)
    return {"status": "predicted", "label": prediction["label"]}


def invoke_endpoint(endpoint: str, png: bytes) -> tuple[bytes, float]:
    """Send the normalised PNG; returns the endpoint's answer and the call's latency in ms."""
    started = time.perf_counter()
    response = aws.client("sagemaker-runtime").invoke_endpoint(
        EndpointName=endpoint, ContentType="image/png", Accept="application/json", Body=png
    )
    body = response["Body"].read()
    return body, round(1000 * (time.perf_counter() - started), 1)


def request_id(obj: SourceObject) -> str:
    """One id per (bucket, key, version): a retried submission overwrites its own input and result."""
    return hashlib.sha256(f"{obj.bucket}/{obj.key}?versionId={obj.version_id}".encode()).hexdigest()[:24]


def result_key(request: str) -> str:
    return f"{layout.ASYNC_OUTPUT}{request}{ASYNC_RESULT_SUFFIX}"


def request_key(request: str) -> str:
    return f"{layout.ASYNC_REQUESTS}{request}.json"


def submit_async(obj: SourceObject, endpoint: str, png: bytes, started_at: float) -> str:
    """Queue one request on an asynchronous endpoint; returns its id.

    What the record needs goes to ``async-requests/<id>.json`` *before* the request is queued (the
    result may land before ``InvokeEndpointAsync`` returns), the PNG to ``async-input/<id>.png``, and
    ``Filename`` names the result ``async-output/<id>.out`` (InvokeEndpointAsync's ``Filename``: "The
    filename for the inference response payload stored in Amazon S3", at most 32 characters).
    """
    request = request_id(obj)
    s3io.put_json(obj.bucket, request_key(request), {
        "source": obj.describe(), "sequencer": obj.sequencer, "endpoint": endpoint, "started_at": started_at,
        "submitted_at": time.time(),
    })
    input_key = f"{layout.ASYNC_INPUT}{request}.png"
    aws.client("s3").put_object(Bucket=obj.bucket, Key=input_key, Body=png, ContentType="image/png")
    response = aws.client("sagemaker-runtime").invoke_endpoint_async(
        EndpointName=endpoint, InputLocation=f"s3://{obj.bucket}/{input_key}", ContentType="image/png",
        Accept="application/json", InferenceId=request, Filename=f"{request}{ASYNC_RESULT_SUFFIX}",
    )
    if not response["OutputLocation"].endswith(f"/{result_key(request)}"):
        raise EndpointResponseError(f"the endpoint will write {response['OutputLocation']}, not .../"
                                    f"{result_key(request)}: is its S3OutputPath the inference bucket's "
                                    f"{layout.ASYNC_OUTPUT}?")
    return request


def parse_answer(body: bytes) -> dict:
    """The endpoint's JSON, with every field the record needs."""
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise EndpointResponseError(f"endpoint returned non-JSON: {exc}") from None
    missing = [name for name in RESPONSE_FIELDS if name not in answer]
    if missing:
        raise EndpointResponseError(f"endpoint response lacks {missing}")
    return answer


def record_prediction(obj: SourceObject, answer: dict, endpoint: str, settings: Settings, latency: dict) -> dict:
    """Write ``predictions/<key>.json`` (unless a newer version wrote it) and the DynamoDB item: both modes end here."""
    prediction = prediction_record(obj, answer, endpoint, settings.uncertainty_band)
    prediction["latency_ms"] = latency
    s3io.put_json_if_newest(obj.bucket, layout.prediction_key(obj.key), prediction, obj.sequencer)
    aws.client("dynamodb").put_item(TableName=settings.predictions_table, Item=_dynamodb_item(prediction))
    metrics.add_metric(name="PredictLatency", unit=MetricUnit.Milliseconds, value=latency["total"])
    logger.info("predicted", key_ref=obj.ref, label=prediction["label"], outcome="predicted",
                refer=prediction["refer_to_radiologist"], latency_ms=latency)
    return prediction


def prediction_record(source: SourceObject, answer: dict, endpoint: str, band: tuple[float, float]) -> dict:
    """The prediction contract (ARCHITECTURE.md, "Prediction record")."""
    pneumonia = float(answer["pneumonia_probability"])
    return {
        "source": source.describe(),
        "label": answer["label"],
        "confidence": float(answer["confidence"]),
        "probabilities": {k: float(v) for k, v in answer["probabilities"].items()},
        "pneumonia_probability": pneumonia,
        "refer_to_radiologist": band[0] <= pneumonia <= band[1],
        "uncertainty_band": list(band),
        "model_id": answer["model_id"],
        "endpoint": endpoint,
        "predicted_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


def _dynamodb_item(prediction: dict) -> dict:
    """One item per (object, version); numbers as DynamoDB numbers, the full record as JSON too."""
    source = prediction["source"]
    plain = json.loads(json.dumps(prediction), parse_float=Decimal)
    item = {
        "pk": f"{source['bucket']}/{source['key']}",
        "sk": source["version_id"] or "null",
        "label": plain["label"],
        "confidence": plain["confidence"],
        "pneumonia_probability": plain["pneumonia_probability"],
        "refer_to_radiologist": plain["refer_to_radiologist"],
        "model_id": plain["model_id"],
        "predicted_at": plain["predicted_at"],
        "record": json.dumps(prediction, sort_keys=True),
    }
    serializer = TypeSerializer()
    return {name: serializer.serialize(value) for name, value in item.items()}


def _retriable(exc: BaseException) -> bool:
    """Throttling, timeouts, model-container errors, a bad answer, or the same object in flight elsewhere."""
    if isinstance(exc, (EndpointResponseError, IdempotencyAlreadyInProgressError)) or aws.is_transient(exc):
        return True
    return isinstance(exc, ClientError) and aws.error_code(exc) in ENDPOINT_ERROR_CODES
