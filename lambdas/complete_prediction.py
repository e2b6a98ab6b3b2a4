"""CompletePrediction Lambda: an asynchronous endpoint's result in ``async-output/`` -> the prediction record.

The predict function queued the request (:func:`lambdas.predict.submit_async`) with what the record
needs in ``async-requests/<id>.json``; the endpoint writes its answer to ``async-output/<id>.out``,
whose S3 event lands here. The version's DynamoDB item is written by the very function the
synchronous path uses, so the contract is one; then the ``incoming/`` key is derived again, under
its lease, as the predict function derives it: ``predictions/<key>.json`` becomes current only if
that version is still the key's current one (a newer upload or a delete has its own outcome), and so does
its overlay PNG when one was asked for (written under the lease, so a late result of an older version never
replaces the newer version's overlay). A
failure the endpoint writes under ``async-output/failures/`` is raised: Lambda retries, then the
event waits in the dead-letter queue and the error alarm fires, as a synchronous model error ends.
"""

from __future__ import annotations

import functools
import time
from datetime import datetime

from aws_lambda_powertools.utilities.data_classes import S3Event, event_source

from lambdas import aws, predict, s3io
from lambdas.domain import imaging, layout
from lambdas.domain.settings import Settings
from lambdas.s3io import SourceObject
from lambdas.state_store import SourceRef, handle

logger = predict.logger  # one service: the predictions are the predict function's


class AsyncInferenceFailed(RuntimeError):
    """The endpoint wrote a failure for a request instead of a result."""


class UnknownAsyncResult(RuntimeError):
    """A result without the request it answers (written by something other than the predict function)."""


@logger.inject_lambda_context(log_event=False)
@event_source(data_class=S3Event)
def handler(event: S3Event, context) -> dict:
    settings = Settings.from_env()
    settings.require("predictions_table", "source_state_table")
    predictions = predict.Predictions(settings, context, submits=False)
    outcomes = {"predicted": 0, "skipped": 0}
    for record in event.records:
        result = SourceObject.from_record(record)
        if not record.event_name.startswith("ObjectCreated") or not result.key.startswith(layout.ASYNC_OUTPUT):
            outcomes["skipped"] += 1
            continue
        if result.key.startswith(layout.ASYNC_FAILURES):
            raise AsyncInferenceFailed(f"the endpoint failed a request ({layout.file_name(result.key)}): "
                                       f"{_read(result)[:500].decode(errors='replace')}")
        prediction, overlay, key = complete(result, _landed_at(record.event_time), settings)
        source = prediction["source"]
        report = structured_report(prediction, key) if "dicom_sr" in prediction else None
        handle(predictions.store, SourceRef(source["bucket"], key, source["name"]), "",
               functools.partial(_derive_with_outputs, predictions, source["version_id"], overlay, report), context)
        predictions.latencies.append(prediction["latency_ms"]["total"])
        predictions.out_of_distribution += predict.out_of_distribution(prediction)
        outcomes["predicted"] += 1
    predict.publish(outcomes, predictions.latencies, predictions.out_of_distribution)
    return outcomes


def _derive_with_outputs(predictions: predict.Predictions, version_id: str | None, overlay: bytes | None,
                         report: bytes | None, ref: SourceRef, previous: dict | None) -> dict:
    """The key's outcome, and this result's overlay and DICOM SR beside it when its version is the one now
    predicted."""
    record = predictions.derive(ref, previous)
    current = record.get("prediction", {}) if record["source"]["version_id"] == version_id else {}
    if overlay is not None and "explanation" in current:
        s3io.put_png(ref.bucket, current["explanation"]["overlay_key"], overlay)
    if report is not None and "dicom_sr" in current:
        s3io.put_dicom(ref.bucket, current["dicom_sr"]["key"], report)
    return record


def structured_report(prediction: dict, key: str) -> bytes | None:
    """The DICOM SR of a prediction on a DICOM upload (``key``), made from the very version that was predicted
    (None when that version is gone: its key then has another outcome)."""
    from lambdas.domain import dicom, dicom_sr  # noqa: PLC0415 (pydicom only when a DICOM file arrives)

    source = prediction["source"]
    try:
        data, _ = s3io.download(source["bucket"], key, source["version_id"])
        return dicom_sr.to_bytes(dicom_sr.structured_report(dicom.read(data), prediction))
    except imaging.RejectedImage:
        return None


def complete(result: SourceObject, landed_at: float, settings: Settings) -> tuple[dict, bytes | None, str]:
    """Record the prediction one result object answers (the version's DynamoDB item); returns the record, the
    overlay PNG to keep beside it, if any, and the upload's key (from its name's pointer: the request names
    the upload, never keys it)."""
    name = layout.file_name(result.key)
    request = name.removesuffix(predict.ASYNC_RESULT_SUFFIX)
    context = s3io.read_json(result.bucket, predict.request_key(request))
    if name == request or context is None:
        raise UnknownAsyncResult(f"no request {predict.request_key(request)} for the result {name}")
    source = context["source"]
    key = s3io.pointed_key(source["bucket"], layout.INCOMING, source["name"])
    if key is None:
        raise UnknownAsyncResult(f"no pointer to the upload named {source['name']}")
    obj = SourceObject(source["bucket"], key, source["size"], source["version_id"], "", source["name"])
    answer = predict.parse_answer(_read(result))
    latency = {"endpoint": round(1000 * (landed_at - context["submitted_at"]), 1),
               "total": round(1000 * (time.time() - context["started_at"]), 1)}
    prediction, overlay = predict.record_prediction(obj, answer, context["endpoint"], settings, latency,
                                                    context.get("explain"), dicom_sr=context.get("dicom_sr", False))
    return prediction, overlay, key


def _read(result: SourceObject) -> bytes:
    """The exact version the event announced (the key is rewritten when a request is submitted again)."""
    version = {"VersionId": result.version_id} if result.version_id else {}
    return aws.client("s3").get_object(Bucket=result.bucket, Key=result.key, **version)["Body"].read()


def _landed_at(event_time: str) -> float:
    """The S3 event's ``eventTime`` (when the result was written) as epoch seconds."""
    return datetime.fromisoformat(event_time).timestamp()
