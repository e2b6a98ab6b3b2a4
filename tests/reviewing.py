"""Review-loop test helpers: the review-tasks table as infra.wiring describes it, and histories of incoming/
keys whose referred and sampled versions must end as exactly the open tasks."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import histories
from infra import wiring
from ingested import name_of
from lambdas import aws, predict, review_queue
from lambdas.domain import layout, review, source_names, source_state

SAMPLE_RATE = 0.5
"""High, so that short histories see sampled and unsampled unreferred versions alike."""


def create_review_table(name: str) -> str:
    spec = wiring.REVIEW_TASKS_TABLE
    schema = lambda pk, sk: [{"AttributeName": pk, "KeyType": "HASH"}, {"AttributeName": sk, "KeyType": "RANGE"}]  # noqa: E731
    index = spec.indexes[0]
    attributes = {spec.partition_key, spec.sort_key, index.partition_key, index.sort_key}
    aws.client("dynamodb").create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST", KeySchema=schema(spec.partition_key, spec.sort_key),
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in sorted(attributes)],
        GlobalSecondaryIndexes=[{"IndexName": index.name, "KeySchema": schema(index.partition_key, index.sort_key),
                                 "Projection": {"ProjectionType": "ALL"}}])
    return name


def tasks(table: str) -> dict[str, dict]:
    """Every task item by id (verdicts and views left out)."""
    pages = aws.client("dynamodb").get_paginator("scan").paginate(TableName=table)
    items = [review_queue.decode(i) for page in pages for i in page["Items"]]
    return {i["pk"]: i for i in items if i["sk"] == review.TASK_SORT_KEY}


def referring_endpoint(name: str, png: bytes, explain: bool = False) -> tuple[bytes, float]:
    """The histories' stand-in endpoint, with a decision rule: it refers what it calls viral."""
    answer = json.loads(histories.endpoint(name, png, explain)[0])
    answer |= {"refer_to_radiologist": answer["label"] == "viral", "referral_reasons": [], "threshold": 0.5,
               "referral_band": [0.2, 0.8]}
    return json.dumps(answer).encode(), 1.0


class ReviewReplay(histories.PredictReplay):
    """``incoming/`` histories with the review queue on: open tasks are exactly the current selected versions."""

    def __init__(self):
        super().__init__()
        self.environment |= {wiring.ENV_REVIEW_TASKS_TABLE: create_review_table(f"review-{self.n}"),
                             wiring.ENV_REVIEW_SAMPLE_RATE: str(SAMPLE_RATE)}

    @contextmanager
    def running(self):
        with super().running(), mock.patch.object(predict, "invoke_endpoint", referring_endpoint):
            yield

    def check_more(self, expected: dict, records: dict) -> None:
        super().check_more(expected, records)
        selected = set()
        for key, (outcome, label, version) in expected.items():
            task = review.task_id(self.bucket, name_of(key, self.bucket), version)
            if outcome == source_state.PREDICTED and (label == "viral" or review.sampled(task, SAMPLE_RATE)):
                selected.add(task)
        found = tasks(self.environment[wiring.ENV_REVIEW_TASKS_TABLE])
        queued = {t for t, item in found.items() if item["status"] == review.OPEN}
        assert queued == selected, (sorted(queued), sorted(selected))
        for task in queued:
            assert found[task]["queue"] == review.OPEN
            assert found[task]["reason"] == (review.REFERRED if found[task]["label"] == "viral"
                                             else review.QUALITY_CONTROL)
        for task, item in found.items():
            if task not in queued:
                assert item["status"] == review.WITHDRAWN and "queue" not in item, item


def referred_task(s3, bucket: str, table: str, xray: Path, content_hash: str, probabilities: dict,
                  key: str = "incoming/ward/NORMAL2-IM-1436-0001.jpeg", overlay: bytes | bool = True) -> str:
    """Upload an X-ray under ``incoming/`` and open the task its referred prediction would (with the pointer from
    the upload's name to its key, as the predict function writes it); returns the task id."""
    version = s3.put_object(Bucket=bucket, Key=key, Body=xray.read_bytes())["VersionId"]
    name = name_of(key, bucket)
    s3.put_object(Bucket=bucket, Key=source_names.pointer_key(key, name), Body=key.encode())
    label = max(probabilities, key=probabilities.get)
    prediction = {"source": {"bucket": bucket, "name": name, "version_id": version, "size": xray.stat().st_size},
                  "label": label, "confidence": probabilities[label], "probabilities": probabilities,
                  "pneumonia_probability": 1 - probabilities["normal"], "refer_to_radiologist": True,
                  "referral_reasons": ["near_threshold"], "threshold": 0.5, "referral_band": [0.2, 0.8],
                  "model_id": "m", "predicted_at": review_queue.now(), "audit": {"content_hash": content_hash}}
    if overlay:
        overlay_key = layout.overlay_key(name)
        s3.put_object(Bucket=bucket, Key=overlay_key, Body=overlay if isinstance(overlay, bytes) else b"\x89PNG")
        prediction["explanation"] = {"overlay_key": overlay_key, "method": "cam"}
    return review_queue.open_task(table, prediction, 0.0)


def totp(secret: str) -> str:
    """The authenticator code moto's Cognito expects now (``MOTO_COGNITO_IDP_USER_POOL_ENABLE_TOTP``), from a
    30-second window with at least 5 s left: a code made at a window's end reached the check in the next one
    (suspected in a clean-clone run where the sign-in left the queue empty)."""
    import time

    from moto.cognitoidp.utils import cognito_totp

    left = 30 - time.time() % 30
    if left < 5:
        time.sleep(left + 0.1)
    return cognito_totp(secret).generate(int(time.time())).decode()


def sign_in(page, url: str, email: str, temporary: str, password: str) -> None:
    """An invited reviewer's first sign-in on the review page: temporary password, a new one, TOTP set-up."""
    from playwright.sync_api import expect

    page.goto(url)
    page.fill("#username", email)
    page.fill("#password", temporary)
    page.click("#login-button")
    page.fill("#new-password", password)
    page.click("#login-button")
    expect(page.locator("#mfa-secret")).not_to_be_empty()
    page.fill("#mfa-code", totp(page.inner_text("#mfa-secret")))
    page.click("#login-button")
