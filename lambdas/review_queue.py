"""The review queue in DynamoDB: the predict path opens tasks, the review API reads and closes them.

One item per task (``pk`` = task id, ``sk`` = ``task``) with the prediction a reviewer needs, and beside it
one item per verdict (``verdict#<reviewer>``) and per view (``view#<time>#<reviewer>``). Queued tasks carry
a ``queue`` attribute (their status), the partition key of the sparse ``Queue`` index; a task leaves the
index when the attribute is removed. Every write is conditional, so S3's duplicate and late deliveries
change nothing twice (:mod:`lambdas.domain.review`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from lambdas import aws
from lambdas.domain import review, source_state

QUEUE_INDEX = "Queue"
QUEUE_ATTRIBUTE = "queue"
_serializer, _deserializer = TypeSerializer(), TypeDeserializer()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def encode(item: dict) -> dict:
    plain = json.loads(json.dumps(item), parse_float=Decimal)
    return {name: _serializer.serialize(value) for name, value in plain.items() if value is not None}


def decode(item: dict) -> dict:
    return json.loads(json.dumps({k: _deserializer.deserialize(v) for k, v in item.items()}, default=_number))


def _number(value):
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(type(value))


def follow(table: str, sample_rate: float, previous: dict | None, record: dict) -> str | None:
    """Keep the queue in step with a key's new current outcome (called under the key's lease).

    A predicted version the rules select gets its task (once, whatever the deliveries); the open task of a
    version that is no longer current is withdrawn. Returns the current version's task id, if it has one.
    """
    created = None
    if record["outcome"] == source_state.PREDICTED:
        created = open_task(table, record["prediction"], sample_rate)
    if previous is not None and previous.get("outcome") == source_state.PREDICTED:
        source = previous["source"]
        if (record["outcome"] != source_state.PREDICTED
                or record["source"].get("version_id") != source.get("version_id")):
            withdraw(table, review.task_id(source["bucket"], source["name"], source.get("version_id")))
    return created


def task_item(prediction: dict, task: str, reason: str, at: str, sample_rate: float) -> dict:
    """What a reviewer needs, and nothing that names the patient: the upload's opaque name, never its key (the copy
    finds the key from the name's pointer, ``review_data.original_key``). A quality-control task keeps the sample
    rate it was drawn at: it weighs ``1 / rate`` predictions in ``field_performance``, whatever the rate is later."""
    source = prediction["source"]
    audit = prediction.get("audit") or {}
    return {
        "pk": task, "sk": review.TASK_SORT_KEY, "status": review.OPEN, QUEUE_ATTRIBUTE: review.OPEN,
        "reason": reason, "created_at": at, "updated_at": at, "assigned_reviewer": None,
        "bucket": source["bucket"], "name": source["name"], "version_id": source.get("version_id"),
        "label": prediction["label"], "confidence": prediction["confidence"],
        "probabilities": prediction["probabilities"], "pneumonia_probability": prediction.get("pneumonia_probability"),
        "referral_reasons": prediction.get("referral_reasons") or [], "threshold": prediction.get("threshold"),
        "referral_band": prediction.get("referral_band"), "model_id": prediction.get("model_id"),
        "predicted_at": prediction.get("predicted_at"), "content_hash": audit.get("content_hash"),
        "overlay_key": (prediction.get("explanation") or {}).get("overlay_key"),
        **({"sample_rate": sample_rate} if reason == review.QUALITY_CONTROL else {}),
    }


def open_task(table: str, prediction: dict, sample_rate: float) -> str | None:
    """The version's task, created if the rules select it and it does not exist yet; its id, or None."""
    source = prediction["source"]
    task = review.task_id(source["bucket"], source["name"], source.get("version_id"))
    reason = review.reason_to_review(prediction, task, sample_rate)
    if reason is None:
        return None
    try:
        item = task_item(prediction, task, reason, now(), sample_rate)
        aws.client("dynamodb").put_item(TableName=table, Item=encode(item),
                                        ConditionExpression="attribute_not_exists(pk)")
    except ClientError as exc:
        if aws.error_code(exc) != "ConditionalCheckFailedException":
            raise
    return task


def withdraw(table: str, task: str) -> bool:
    """Take an unreviewed task out of the queue; a task with a verdict (or none at all) is left as it is."""
    try:
        aws.client("dynamodb").update_item(
            TableName=table, Key=encode({"pk": task, "sk": review.TASK_SORT_KEY}),
            UpdateExpression="SET #s = :withdrawn, updated_at = :at REMOVE #q",
            ConditionExpression="#s = :open",
            ExpressionAttributeNames={"#s": "status", "#q": QUEUE_ATTRIBUTE},
            ExpressionAttributeValues=encode({":withdrawn": review.WITHDRAWN, ":open": review.OPEN, ":at": now()}))
    except ClientError as exc:
        if aws.error_code(exc) != "ConditionalCheckFailedException":
            raise
        return False
    return True


def task_ref(task: dict) -> str:
    """What logs carry for a task's image: its upload's opaque name (keys hold patient identifiers)."""
    return task["name"]
