"""Predict Lambda: S3 ``incoming/`` events -> one current outcome per key: predicted, rejected, submitted, deleted.

The image goes through the one normaliser before the endpoint sees it (bad input gets
``rejected/<name>.error.json``, the original stays). The endpoint's name is read from SSM, so a
newly deployed model needs no change here. As in ingest (:mod:`lambdas.domain.source_state`), any
event for a key, created or removed, means "derive this key from its current version" under the
key's lease in the source-state table: ``predictions/<name>.json`` and ``rejected/<name>.error.json``
(``<name>`` the key's opaque name, :mod:`lambdas.domain.source_names`: records, outputs and items never
carry the key) are never both current, and the previous outcome is tombstoned. Each (bucket, key, version) is sent
to the endpoint once (Powertools idempotency on DynamoDB, and the record of the version reused);
the DynamoDB item per version is the audit trail and is never retired. Throttling and endpoint
errors are retried by botocore, then raised so Lambda retries the event and finally hands it to
the on-failure destination.

With ``ENDPOINT_MODE=lambda`` there is no endpoint: this function runs the stage's approved model itself
(:mod:`lambdas.served_model`) on the pixels it has just normalised.

An asynchronous endpoint (``ENDPOINT_MODE=async``) takes only ``InvokeEndpointAsync`` with the input
in S3: the PNG goes to ``async-input/``, what the record needs to ``async-requests/``, and
:mod:`lambdas.complete_prediction` writes the same record when the result lands in ``async-output/``.

Explanations: when the upload asks (user metadata ``cxr-explain: true``, as ``cxr predict --explain``
sends it) or ``EXPLAIN_REFERRALS`` is on, the endpoint is asked for its class-activation overlay
(inference.py's JSON request; the answer stays far below the 4 MB serverless limit), and the overlay
is written as ``predictions/<name>.overlay.png`` beside the JSON: always when asked, for referred
predictions only under ``EXPLAIN_REFERRALS``. The overlay is never part of a DynamoDB item (400 KB).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import time
from datetime import UTC, datetime
from decimal import Decimal

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
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

from lambdas import aws, batch_requests, pseudonyms, review_queue, s3io, served_model
from lambdas.domain import audit, imaging, layout, source_names, source_state, uploads
from lambdas.domain.settings import Settings
from lambdas.s3io import SourceObject
from lambdas.state_store import SourceRef, StateStore, handle

logger = Logger(service="cxr-predict")
METRICS_NAMESPACE, SERVICE = "CxrServerless", "cxr-predict"
IDEMPOTENCY = IdempotencyConfig(event_key_jmespath="[bucket, key, version_id]", expires_after_seconds=7 * 24 * 3600)
ENDPOINT_CACHE_SECONDS = 60
ENDPOINT_ERROR_CODES = frozenset({"ModelError", "ModelNotReadyException", "InternalDependencyException"})
RESPONSE_FIELDS = ("label", "confidence", "probabilities", "pneumonia_probability", "model_id")
REFERRAL_FIELDS = ("refer_to_radiologist", "referral_reasons", "threshold", "referral_band")
"""The model's own decision rule (``training_job/decision.py``): the endpoint applies it, this function records it."""
MODEL_WITHOUT_RULE = "model_without_referral_rule"
"""Reason recorded for an endpoint whose code predates the rule (no referral in its answer): referred, never
labelled quietly."""
ASYNC_RESULT_SUFFIX = ".out"
EXPLAIN_REQUESTED, EXPLAIN_REFERRED = "requested", "referred"
"""When an overlay is kept: the upload asked for it, or the prediction is referred (``EXPLAIN_REFERRALS``)."""


class EndpointResponseError(RuntimeError):
    """The endpoint answered with something that is not a prediction: retried, then dead-lettered."""


@logger.inject_lambda_context(log_event=False)
def handler(event: dict, context) -> dict:
    """S3 events on ``incoming/``; with ``endpoint_mode=lambda`` also `cxr batch-predict`'s direct requests."""
    if batch_requests.EVENT_FIELD in event:
        return answer_batch_request(event[batch_requests.EVENT_FIELD])
    return on_uploads(event, context)


def answer_batch_request(request: dict) -> dict:
    """One staged object of a batch job (:mod:`lambdas.batch_requests`), in this stage's inference bucket only."""
    if os.environ.get("ENDPOINT_MODE") != "lambda":
        raise batch_requests.BatchRequestError("batch requests are answered with endpoint_mode=lambda only; the "
                                               "other modes score batches with Batch Transform")
    settings = Settings.from_env()
    result = batch_requests.answer(settings.inference_bucket, str(request["key"]), settings.max_upload_bytes,
                                   served_model.current(os.environ[served_model.MODEL_PACKAGE_GROUP_VARIABLE]))
    logger.info("batch request answered", extra=result)
    return result


@event_source(data_class=S3Event)
def on_uploads(event: S3Event, context) -> dict:
    settings = Settings.from_env()
    settings.require("predictions_table", "idempotency_table", "endpoint_parameter", "source_state_table")
    IDEMPOTENCY.register_lambda_context(context)
    predictions = Predictions(settings, context)
    outcomes = dict.fromkeys(("predicted", "submitted", "rejected", "removed", source_state.DUPLICATE,
                              source_state.SUPERSEDED, source_state.DEFERRED, "skipped", "transient"), 0)
    for record in event.records:
        source = SourceObject.from_record(record)
        if not record.event_name.startswith(("ObjectCreated", "ObjectRemoved")) or not source.key.startswith(
                layout.INCOMING) or source.key.endswith("/") or source_names.is_pointer(source.key):
            outcomes["skipped"] += 1
            continue
        name = None  # until the secret is read: a transient error may come before it
        try:
            name = pseudonyms.source_name(settings, source.bucket, source.key)
            outcome = handle(predictions.store, SourceRef(source.bucket, source.key, name), source.sequencer,
                             predictions.derive, context)
        except Exception as exc:
            if not _retriable(exc):
                raise
            outcomes["transient"] += 1
            logger.warning("prediction will be retried", source=name, error=type(exc).__name__)
            continue
        outcomes[COUNTED.get(outcome, outcome)] += 1
    publish(outcomes, predictions.latencies, predictions.out_of_distribution)
    if outcomes["transient"]:
        raise aws.TransientError(f"{outcomes['transient']} record(s) failed transiently; completed ones are idempotent")
    return outcomes


COUNTED = {source_state.PREDICTED: "predicted", source_state.SUBMITTED: "submitted",
           source_state.REJECTED: "rejected", source_state.DELETED: "removed"}
"""Outcome kind -> the handler's count for it."""


def publish(outcomes: dict, latencies: list[float], out_of_distribution: int = 0) -> None:
    """The invocation's counts and latencies as one EMF document, from a metric set of its own (reentrant).

    ``OutOfDistribution`` counts the new predictions whose input the model's guard flagged (always
    emitted, zero included, so that its rate against ``Predictions`` is defined; the alarm is in
    ``infra/stacks/monitoring.py``)."""
    metrics = EphemeralMetrics(namespace=METRICS_NAMESPACE, service=SERVICE)
    metrics.add_metric(name="OutOfDistribution", unit=MetricUnit.Count, value=out_of_distribution)
    for name, metric in (("predicted", "Predictions"), ("rejected", "PredictionsRejected"),
                         (source_state.DUPLICATE, "DuplicateEvents"), (source_state.SUPERSEDED, "SupersededEvents")):
        if name in outcomes:
            metrics.add_metric(name=metric, unit=MetricUnit.Count, value=outcomes[name])
    for latency in latencies:
        metrics.add_metric(name="PredictLatency", unit=MetricUnit.Milliseconds, value=latency)
    metrics.flush_metrics()


class Predictions:
    """One invocation's view of the source-state table, the idempotent endpoint call and the settings.

    ``submits``: whether deriving a key may send its current version to the endpoint (the predict
    function); CompletePrediction only records results that landed and leaves new versions to it.
    """

    def __init__(self, settings: Settings, context, submits: bool = True):
        self.settings, self.context, self.submits = settings, context, submits
        self.store = StateStore(settings.source_state_table)
        self.latencies: list[float] = []
        self.out_of_distribution = 0

    def derive(self, ref: SourceRef, previous: dict | None) -> dict:
        """The key's outcome from its current version; writes what it owns, tombstones what it no longer owns."""
        current = s3io.current_version(ref.bucket, ref.key)
        if current is not None and (previous or {}).get("outcome") in (None, source_state.DELETED):
            s3io.put_pointer(ref.bucket, ref.key, ref.name)  # the way back, for a review copy or an async result
        record = (_removed(ref) if current is None else self._outcome(
            SourceObject(ref.bucket, ref.key, current.size, current.version_id, "", ref.name), previous))
        if record["outcome"] == source_state.PREDICTED:  # the record is kept: Object Lock retention when configured
            s3io.put_json(ref.bucket, layout.prediction_key(ref.name), record["prediction"],
                          retain_until=audit.retain_until(self.settings.prediction_retention_days))
        elif record["outcome"] == source_state.REJECTED:
            s3io.put_json(ref.bucket, layout.rejected_key(ref.name), source_state.error_document(record))
        if previous is not None:
            for name in set(source_state.outputs(previous)) - set(source_state.outputs(record)):
                s3io.tombstone(ref.bucket, name)
        if self.settings.review_tasks_table:  # referred (or sampled) versions queue for a radiologist
            review_queue.follow(self.settings.review_tasks_table, self.settings.review_sample_rate, previous, record)
        logger.info(record["outcome"], source=ref.name, outcome=record["outcome"],
                    reason=record.get("reason"))
        return record

    def _outcome(self, obj: SourceObject, previous: dict | None) -> dict:
        """One version, one outcome: a version already predicted or rejected is not sent again."""
        source = obj.describe()
        same = previous is not None and previous["source"].get("version_id") == obj.version_id
        if same and previous["outcome"] in (source_state.PREDICTED, source_state.REJECTED):
            return previous
        if (same and previous["outcome"] == source_state.SUBMITTED) or not self.submits:
            # only an asynchronous result that has landed can change it; new versions are the predict function's
            return _completed(source, self.settings) or previous or {"outcome": source_state.SUBMITTED,
                                                                     "source": source}
        result = _idempotent_predict(self.settings.idempotency_table)(source={**source, "key": obj.key})
        if result["status"] == "rejected":
            return {"outcome": source_state.REJECTED, "source": source, "reason": result["reason"],
                    "message": result["message"]}
        if result["status"] == "submitted":
            return _completed(source, self.settings) or {"outcome": source_state.SUBMITTED, "source": source}
        self.latencies.append(result["prediction"]["latency_ms"]["total"])
        self.out_of_distribution += out_of_distribution(result["prediction"])
        return {"outcome": source_state.PREDICTED, "source": source, "prediction": result["prediction"]}


def _removed(ref: SourceRef) -> dict:
    return {"outcome": source_state.DELETED, "source": {"bucket": ref.bucket, "name": ref.name, "version_id": None,
                                                         "size": 0}}


def _completed(source: dict, settings: Settings) -> dict | None:
    """The predicted record of a version whose asynchronous result has landed (its DynamoDB item), if it has."""
    item = aws.client("dynamodb").get_item(TableName=settings.predictions_table, ConsistentRead=True, Key={
        "pk": {"S": f"{source['bucket']}/{source['name']}"}, "sk": {"S": source["version_id"] or "null"}}).get("Item")
    if item is None:
        return None
    return {"outcome": source_state.PREDICTED, "source": source, "prediction": json.loads(item["record"]["S"])}


@functools.cache
def _idempotent_predict(table_name: str):
    """Built on first use, so the DynamoDB client is created inside the invocation's environment."""
    store = DynamoDBPersistenceLayer(table_name=table_name, boto3_client=aws.client("dynamodb"))
    return idempotent_function(data_keyword_argument="source", config=IDEMPOTENCY, persistence_store=store)(
        predict_object
    )


def predict_object(source: dict) -> dict:
    """Normalise and predict one version, or queue it: ``rejected``, ``predicted`` (with the record), ``submitted``.

    ``source`` has the key to read; what is returned (and kept in the idempotency table) has only its name."""
    settings = Settings.from_env()
    obj = SourceObject(source["bucket"], source["key"], source["size"], source["version_id"], "", source["name"])
    started, started_at = time.perf_counter(), time.time()
    try:
        imaging.check_upload_size(obj.size, settings.max_upload_bytes)
        data, metadata = s3io.download(obj.bucket, obj.key, obj.version_id)
        image, data_set = uploads.normalise(data)
    except imaging.RejectedImage as exc:
        return {"status": "rejected", "reason": exc.code, "message": exc.message}
    explain = explain_policy(metadata, settings)
    reported = data_set is not None and settings.dicom_sr_output
    if os.environ.get("ENDPOINT_MODE") == "lambda":  # this function runs the approved model itself
        body, endpoint, endpoint_ms = served_model.answer(image, explain is not None)
    else:
        endpoint = parameters.get_parameter(settings.endpoint_parameter, max_age=ENDPOINT_CACHE_SECONDS)
        if os.environ.get("ENDPOINT_MODE") == "async":
            submit_async(obj, endpoint, image.wire_png, started_at, explain, dicom_sr=reported)
            return {"status": "submitted"}
        body, endpoint_ms = invoke_endpoint(endpoint, image.wire_png, explain is not None)
    latency = {"endpoint": endpoint_ms, "total": round(1000 * (time.perf_counter() - started), 1)}
    prediction, overlay = record_prediction(obj, parse_answer(body), endpoint, settings, latency, explain,
                                            dicom_sr=reported)
    if overlay is not None:  # under the key's lease, for its current version: derive writes the JSON beside it
        s3io.put_png(obj.bucket, prediction["explanation"]["overlay_key"], overlay)
    if reported:  # as the overlay: an output of this outcome (lambdas/domain/dicom_sr.py)
        from lambdas.domain import dicom_sr  # noqa: PLC0415 (pydicom only when a DICOM file arrives)

        s3io.put_dicom(obj.bucket, prediction["dicom_sr"]["key"], dicom_sr.to_bytes(
            dicom_sr.structured_report(data_set, prediction)))
    return {"status": "predicted", "prediction": prediction}


def explain_policy(metadata: dict[str, str], settings: Settings) -> str | None:
    """When this upload's overlay is kept (None: the endpoint is not asked for one)."""
    if metadata.get(layout.EXPLAIN_METADATA, "").strip().lower() == "true":
        return EXPLAIN_REQUESTED
    return EXPLAIN_REFERRED if settings.explain_referrals else None


def endpoint_request(png: bytes, explain: bool) -> tuple[str, bytes]:
    """Content type and body: the normalised PNG, or inference.py's JSON request that asks for the overlay."""
    if not explain:
        return "image/png", png
    return "application/json", json.dumps({"image": base64.b64encode(png).decode(), "explain": True}).encode()


def invoke_endpoint(endpoint: str, png: bytes, explain: bool = False) -> tuple[bytes, float]:
    """Send the normalised PNG; returns the endpoint's answer and the call's latency in ms."""
    started = time.perf_counter()
    content_type, body = endpoint_request(png, explain)
    response = aws.client("sagemaker-runtime").invoke_endpoint(
        EndpointName=endpoint, ContentType=content_type, Accept="application/json", Body=body
    )
    answer = response["Body"].read()
    return answer, round(1000 * (time.perf_counter() - started), 1)


def request_id(obj: SourceObject) -> str:
    """One id per (bucket, key, version): a retried submission overwrites its own input and result."""
    return hashlib.sha256(f"{obj.bucket}/{obj.key}?versionId={obj.version_id}".encode()).hexdigest()[:24]


def result_key(request: str) -> str:
    return f"{layout.ASYNC_OUTPUT}{request}{ASYNC_RESULT_SUFFIX}"


def request_key(request: str) -> str:
    return f"{layout.ASYNC_REQUESTS}{request}.json"


def submit_async(obj: SourceObject, endpoint: str, png: bytes, started_at: float, explain: str | None = None,
                 dicom_sr: bool = False) -> str:
    """Queue one request on an asynchronous endpoint; returns its id.

    What the record needs goes to ``async-requests/<id>.json`` *before* the request is queued (the
    result may land before ``InvokeEndpointAsync`` returns), the PNG to ``async-input/<id>.png``, and
    ``Filename`` names the result ``async-output/<id>.out`` (InvokeEndpointAsync's ``Filename``: "The
    filename for the inference response payload stored in Amazon S3", at most 32 characters).
    """
    request = request_id(obj)
    s3io.put_json(obj.bucket, request_key(request), {
        "source": obj.describe(), "endpoint": endpoint, "started_at": started_at, "submitted_at": time.time(),
        "explain": explain, "dicom_sr": dicom_sr,
    })
    input_key = f"{layout.ASYNC_INPUT}{request}.png"
    content_type, body = endpoint_request(png, explain is not None)
    aws.client("s3").put_object(Bucket=obj.bucket, Key=input_key, Body=body, ContentType=content_type)
    response = aws.client("sagemaker-runtime").invoke_endpoint_async(
        EndpointName=endpoint, InputLocation=f"s3://{obj.bucket}/{input_key}", ContentType=content_type,
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


def record_prediction(obj: SourceObject, answer: dict, endpoint: str, settings: Settings, latency: dict,
                      explain: str | None = None, dicom_sr: bool = False) -> tuple[dict, bytes | None]:
    """The version's DynamoDB item (the audit trail), which both modes write, and the overlay PNG to keep, if any;
    ``predictions/<key>.json`` is the key's current outcome, written when the key is derived. ``dicom_sr``:
    the record names the DICOM SR the caller writes (``results-dicom/``)."""
    prediction = prediction_record(obj, answer, endpoint)
    if dicom_sr:
        prediction["dicom_sr"] = {"key": layout.structured_report_key(obj.name)}
    prediction["latency_ms"] = latency
    prediction["audit"] = audit.fields(answer, code_version=settings.code_version)
    explanation = answer.get("explanation")
    keep = explain == EXPLAIN_REQUESTED or (explain == EXPLAIN_REFERRED and prediction["refer_to_radiologist"])
    overlay = None
    if keep and explanation:
        overlay = base64.b64decode(explanation["overlay_png"])
        prediction["explanation"] = {"overlay_key": layout.overlay_key(obj.name), "method": explanation["method"]}
    aws.client("dynamodb").put_item(TableName=settings.predictions_table, Item=_dynamodb_item(prediction))
    logger.info("predicted", source=obj.name, label=prediction["label"], refer=prediction["refer_to_radiologist"],
                referral_reasons=prediction["referral_reasons"], explained=overlay is not None, latency_ms=latency,
                content_hash=prediction["audit"]["content_hash"],
                artifact_sha256=prediction["audit"]["artifact_sha256"])
    return prediction, overlay


def prediction_record(source: SourceObject, answer: dict, endpoint: str) -> dict:
    """The prediction contract (README, "Prediction record"): the referral is the endpoint's, decided by the
    model's own rule, never a second rule here."""
    pneumonia = answer["pneumonia_probability"]
    referral = {name: answer[name] for name in REFERRAL_FIELDS} if "refer_to_radiologist" in answer else {
        "refer_to_radiologist": True, "referral_reasons": [MODEL_WITHOUT_RULE], "threshold": None,
        "referral_band": None}
    return {
        "source": source.describe(),
        "label": answer["label"],
        "confidence": float(answer["confidence"]),
        "probabilities": {k: float(v) for k, v in answer["probabilities"].items()},
        "pneumonia_probability": None if pneumonia is None else float(pneumonia),
        **referral,
        "model_id": answer["model_id"],
        "endpoint": endpoint,
        "predicted_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "out_of_distribution": answer.get("out_of_distribution"),
    }


def out_of_distribution(answer: dict) -> bool:
    """Whether the model's out-of-distribution guard flagged the input (an older model has no guard)."""
    return bool((answer.get("out_of_distribution") or {}).get("flagged"))


def _dynamodb_item(prediction: dict) -> dict:
    """One item per (object, version); numbers as DynamoDB numbers, the full record as JSON too."""
    source = prediction["source"]
    plain = json.loads(json.dumps(prediction), parse_float=Decimal)
    item = {
        "pk": f"{source['bucket']}/{source['name']}",
        "sk": source["version_id"] or "null",
        "label": plain["label"],
        "confidence": plain["confidence"],
        "pneumonia_probability": plain["pneumonia_probability"],
        "refer_to_radiologist": plain["refer_to_radiologist"],
        "referral_reasons": plain["referral_reasons"],
        "model_id": plain["model_id"],
        "predicted_at": plain["predicted_at"],
        "record": json.dumps(prediction, sort_keys=True),
    }
    trail = plain.get("audit") or {}
    item |= {name: trail[name] for name in ("content_hash", "artifact_sha256", "code_version") if trail.get(name)}
    serializer = TypeSerializer()
    return {name: serializer.serialize(value) for name, value in item.items()}


def _retriable(exc: BaseException) -> bool:
    """Throttling, timeouts, model-container errors, a bad answer, or the same object in flight elsewhere."""
    if isinstance(exc, (EndpointResponseError, IdempotencyAlreadyInProgressError)) or aws.is_transient(exc):
        return True
    return isinstance(exc, ClientError) and aws.error_code(exc) in ENDPOINT_ERROR_CODES
