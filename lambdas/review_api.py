"""Review API Lambda (API Gateway HTTP API, payload 2.0): the radiologist's queue, one task, and verdicts.

Routes: ``GET /tasks`` (the open queue), ``GET /tasks/{id}`` (one task with presigned URLs of its review
copies; every view is logged with the reviewer's id), ``POST /tasks/{id}/verdict`` (``{"verdict", "comment"}``).

Who may call: the API's JWT authorizer checks the Cognito token's signature, issuer, audience (``aud``, or
``client_id`` when there is no ``aud``) and expiry before this function runs, and allows or denies "based on
token validation, and optionally, scopes" (API Gateway developer guide, "Control access to HTTP APIs with JWT
authorizers"; "Troubleshooting issues with HTTP API JWT authorizers"): it checks no groups, so this handler
refuses anyone outside :data:`REVIEWERS_GROUP`. The same guide notes that nothing tells an access token from an
ID token, and our client id is the ID token's ``aud``: only ``token_use: access`` is taken. An expired token is
refused again (defence in depth; the offline server runs this handler directly). HTTP APIs hand claims over as
strings, an array as ``"[a b]"`` (:func:`groups`).

Verdicts are immutable: one item per (task, reviewer), written once (a conditional put); the same verdict
again is an idempotent success, another is refused (409). Two reviewers who disagree put the task into
``adjudication`` (ingest, seeing both copies under two labels, trains on neither meanwhile).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import time

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from boto3.dynamodb.types import TypeSerializer
from botocore.config import Config
from botocore.exceptions import ClientError

from lambdas import aws, review_data, review_queue
from lambdas.domain import review

logger = Logger(service="cxr-review-api")
METRICS_NAMESPACE, SERVICE = "CxrServerless", "cxr-review-api"
REVIEWERS_GROUP = review.REVIEWERS_GROUP
PRESIGN_SECONDS = 300
"""How long an image URL works: long enough to load the image, too short to be worth passing on."""
ENV_TABLE, ENV_REVIEW_BUCKET, ENV_DATA_BUCKET, ENV_DATASET = (
    "REVIEW_TASKS_TABLE", "INFERENCE_BUCKET", "DATA_BUCKET", "REVIEW_DATASET")
"""The names infra/wiring.py gives them; review copies live in the inference bucket under ``review/``."""
LIST_LIMIT = 200


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def handler(event: dict, context) -> dict:
    try:
        reviewer = authorise(event)
        route = event.get("routeKey", "")
        task_id = (event.get("pathParameters") or {}).get("id")
        listing, one, verdict = review.ROUTES
        if route == listing:
            return respond(200, {"tasks": open_tasks(reviewer)})
        if route == one:
            return respond(200, view_task(task_id, reviewer))
        if route == verdict:
            return respond(*submit_verdict(task_id, reviewer, body(event)))
        raise Refused(404, "no such route")
    except Refused as exc:
        return respond(exc.status, {"message": exc.message})


def respond(status: int, document: dict) -> dict:
    return {"statusCode": status, "headers": {"content-type": "application/json", "cache-control": "no-store"},
            "body": json.dumps(document)}


def body(event: dict) -> dict:
    text = event.get("body") or ""
    if event.get("isBase64Encoded"):
        text = base64.b64decode(text).decode()
    try:
        document = json.loads(text or "{}")
    except ValueError:
        raise Refused(400, "the body is not JSON") from None
    if not isinstance(document, dict):
        raise Refused(400, "the body must be a JSON object")
    return document


def groups(claims: dict) -> set[str]:
    """``cognito:groups`` as a set, whether a list (a decoded token) or HTTP API's string form ``"[a b]"``."""
    value = claims.get("cognito:groups") or []
    if isinstance(value, str):
        value = value.strip().removeprefix("[").removesuffix("]").replace(",", " ").split()
    return {str(group) for group in value}


def authorise(event: dict, now: float | None = None) -> str:
    """The reviewer's id (the token's ``sub``), or :class:`Refused`."""
    claims = ((event.get("requestContext") or {}).get("authorizer") or {}).get("jwt", {}).get("claims") or {}
    if not claims.get("sub"):
        raise Refused(401, "sign in first")
    if claims.get("token_use") != "access":
        raise Refused(401, "an access token is needed (the page sends one)")
    if float(claims.get("exp") or 0) <= (time.time() if now is None else now):
        raise Refused(401, "the token has expired: sign in again")
    if REVIEWERS_GROUP not in groups(claims):
        raise Refused(403, f"only members of the {REVIEWERS_GROUP!r} group review X-rays")
    return str(claims["sub"])


def _table() -> str:
    return os.environ[ENV_TABLE]


SUMMARY = ("status", "reason", "label", "confidence", "pneumonia_probability", "probabilities", "referral_reasons",
           "threshold", "referral_band", "model_id", "predicted_at", "created_at")


def summary(task: dict) -> dict:
    """What the page shows of a task: never the key (it holds patient identifiers)."""
    return {"id": task["pk"], **{name: task.get(name) for name in SUMMARY},
            "has_overlay": bool(task.get("overlay_key"))}


def open_tasks(reviewer: str) -> list[dict]:
    """Queued tasks, oldest first; a task this reviewer has judged is not theirs to judge again."""
    found = []
    for status in review.QUEUED:
        response = aws.client("dynamodb").query(
            TableName=_table(), IndexName=review_queue.QUEUE_INDEX, KeyConditionExpression="#q = :s",
            ExpressionAttributeNames={"#q": review_queue.QUEUE_ATTRIBUTE},
            ExpressionAttributeValues={":s": {"S": status}}, Limit=LIST_LIMIT)
        found += [review_queue.decode(item) for item in response["Items"]]
    mine = [t for t in found if reviewer not in (t.get("reviewers") or [])]
    return [summary(t) for t in sorted(mine, key=lambda t: t["created_at"])]


def get_task(task_id: str | None) -> dict:
    if not task_id:
        raise Refused(404, "no such task")
    item = aws.client("dynamodb").get_item(TableName=_table(), ConsistentRead=True, Key=review_queue.encode(
        {"pk": task_id, "sk": review.TASK_SORT_KEY})).get("Item")
    if item is None:
        raise Refused(404, "no such task")
    return review_queue.decode(item)


@functools.cache
def _presigner():
    """SigV4 always: objects under SSE-KMS cannot be fetched with a SigV2 URL."""
    return boto3.client("s3", config=Config(signature_version="s3v4"))


def view_task(task_id: str | None, reviewer: str) -> dict:
    """The task, presigned URLs of its review copies, and this reviewer's verdict if any; the view is logged."""
    task = get_task(task_id)
    bucket = os.environ[ENV_REVIEW_BUCKET]
    copies = review_data.review_copies(task, bucket)
    urls = {f"{role}_url": _presigner().generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key, "ResponseCacheControl": review_data.NO_STORE},
        ExpiresIn=PRESIGN_SECONDS) for role, key in copies.items()}
    at = review_queue.now()
    aws.client("dynamodb").put_item(TableName=_table(), Item=review_queue.encode(
        {"pk": task["pk"], "sk": f"{review.VIEW_PREFIX}{at}#{reviewer}", "reviewer": reviewer, "at": at}))
    logger.info("task viewed", task=task["pk"], reviewer=reviewer, source=review_queue.task_ref(task))
    mine = _verdict(task["pk"], reviewer)
    return {**summary(task), **urls, "expires_in": PRESIGN_SECONDS, "verdict": mine and mine["verdict"]}


def _verdict(task_id: str, reviewer: str) -> dict | None:
    item = aws.client("dynamodb").get_item(TableName=_table(), ConsistentRead=True, Key=review_queue.encode(
        {"pk": task_id, "sk": f"{review.VERDICT_PREFIX}{reviewer}"})).get("Item")
    return None if item is None else review_queue.decode(item)


def submit_verdict(task_id: str | None, reviewer: str, document: dict) -> tuple[int, dict]:
    verdict, comment = document.get("verdict"), document.get("comment") or ""
    if verdict not in review.VERDICTS:
        raise Refused(400, f"verdict must be one of {', '.join(review.VERDICTS)}")
    if not isinstance(comment, str) or len(comment) > review.MAX_COMMENT:
        raise Refused(400, f"comment must be text of at most {review.MAX_COMMENT} characters")
    task = get_task(task_id)
    if task["status"] == review.WITHDRAWN:
        raise Refused(409, "the X-ray was replaced or removed since this task was opened")
    item = {"pk": task["pk"], "sk": f"{review.VERDICT_PREFIX}{reviewer}", "reviewer": reviewer, "verdict": verdict,
            "comment": comment, "at": review_queue.now(), "model_label": task["label"],
            "agrees": review.agrees(task["label"], verdict)}
    status = 201
    try:
        aws.client("dynamodb").put_item(TableName=_table(), Item=review_queue.encode(item),
                                        ConditionExpression="attribute_not_exists(pk)")
    except ClientError as exc:
        if aws.error_code(exc) != "ConditionalCheckFailedException":
            raise
        item = _verdict(task["pk"], reviewer)
        if (item["verdict"], item["comment"]) != (verdict, comment):
            raise Refused(409, f"you gave this task the verdict {item['verdict']!r} at {item['at']}; "
                               "verdicts cannot be changed") from None
        status = 200  # the same verdict again (a retried request): nothing new, the copy made if it was not
    task = record_on_task(task["pk"], reviewer, verdict)
    raw_key = review_data.copy_for_training(task, verdict, os.environ[ENV_DATASET], os.environ[ENV_DATA_BUCKET])
    logger.info("verdict", task=task["pk"], reviewer=reviewer, verdict=verdict, status=task["status"],
                agrees=item["agrees"], training_copy=raw_key is not None)
    if status == 201:
        publish(verdict, item["agrees"])
    return status, {"id": task["pk"], "verdict": verdict, "at": item["at"], "status": task["status"],
                    "training_copy": raw_key is not None}


def record_on_task(task_id: str, reviewer: str, verdict: str) -> dict:
    """Add the verdict to the task; different verdicts from two reviewers flag it for adjudication."""
    serialize = TypeSerializer().serialize
    updated = review_queue.decode(aws.client("dynamodb").update_item(
        TableName=_table(), Key=review_queue.encode({"pk": task_id, "sk": review.TASK_SORT_KEY}),
        UpdateExpression="ADD verdicts :v, reviewers :r SET updated_at = :at",
        ExpressionAttributeValues={":v": serialize({verdict}), ":r": serialize({reviewer}),
                                   ":at": serialize(review_queue.now())},
        ReturnValues="ALL_NEW")["Attributes"])
    disagree = len(updated["verdicts"]) > 1
    status = review.ADJUDICATION if disagree else review.REVIEWED
    # concurrent verdicts converge: a disagreement is never overwritten by an agreeing verdict's update
    condition = {} if disagree else {"ConditionExpression": "#s <> :adjudication"}
    try:
        aws.client("dynamodb").update_item(
            TableName=_table(), Key=review_queue.encode({"pk": task_id, "sk": review.TASK_SORT_KEY}),
            UpdateExpression=("SET #s = :s, #q = :s" if disagree else "SET #s = :s REMOVE #q"),
            ExpressionAttributeNames={"#s": "status", "#q": review_queue.QUEUE_ATTRIBUTE},
            ExpressionAttributeValues=review_queue.encode(
                {":s": status, **({} if disagree else {":adjudication": review.ADJUDICATION})}), **condition)
    except ClientError as exc:
        if aws.error_code(exc) != "ConditionalCheckFailedException":
            raise
        status = review.ADJUDICATION
    return {**updated, "status": status}


def publish(verdict: str, agrees: bool | None) -> None:
    """One new verdict as EMF, per verdict class: the dashboard's model-vs-reviewer agreement is
    ``ReviewAgreements / ReviewComparable`` (a not-assessable verdict compares nothing)."""
    metrics = EphemeralMetrics(namespace=METRICS_NAMESPACE, service=SERVICE)
    metrics.add_dimension(name="verdict", value=verdict)
    metrics.add_metric(name="ReviewVerdicts", unit=MetricUnit.Count, value=1)
    if agrees is not None:
        metrics.add_metric(name="ReviewComparable", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="ReviewAgreements", unit=MetricUnit.Count, value=int(agrees))
    metrics.flush_metrics()
