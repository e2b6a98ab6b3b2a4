"""The review queue: every referred prediction and a quality-control sample of the rest become one task each,
whatever S3's deliveries do; a task of a version that is no longer current leaves the queue."""

from __future__ import annotations

import json

import pytest

import reviewing
from lambdas import review_queue
from lambdas.domain import review, source_state


def test_the_quality_control_sample_is_stable_and_near_its_rate():
    ids = [review.task_id("b", f"incoming/{n}.png", "v1") for n in range(20000)]
    drawn = [review.sampled(task, 0.02) for task in ids]
    assert drawn == [review.sampled(task, 0.02) for task in ids]  # a redelivery decides the same
    assert 0.015 < sum(drawn) / len(drawn) < 0.025
    assert not any(review.sampled(task, 0.0) for task in ids) and all(review.sampled(task, 1.0) for task in ids)


def test_a_referred_prediction_is_always_reviewed_and_the_rate_is_checked():
    assert review.reason_to_review({"refer_to_radiologist": True}, "x", 0.0) == review.REFERRED
    assert review.parse_sample_rate(None) == review.DEFAULT_SAMPLE_RATE
    with pytest.raises(ValueError):
        review.parse_sample_rate("1.5")


def test_task_ids_differ_per_version_and_never_show_the_key():
    one, two = review.task_id("b", "incoming/person12_virus.jpeg", "v1"), review.task_id(
        "b", "incoming/person12_virus.jpeg", "v2")
    assert one != two and "person" not in one and len(one) == 32


PREDICTION = {"source": {"bucket": "b", "name": "s-0123456789abcdef0123456789abcdef", "version_id": "v1", "size": 3},
              "label": "normal", "confidence": 0.6, "probabilities": {"normal": 0.6, "pneumonia": 0.4},
              "pneumonia_probability": 0.4, "refer_to_radiologist": True, "referral_reasons": ["near_threshold"],
              "model_id": "m", "predicted_at": "2026-11-30T07:00:00.000+00:00",
              "audit": {"content_hash": "ab" * 32}}


def test_a_duplicate_opens_nothing_twice_and_a_reviewed_task_is_not_withdrawn(aws):
    table = reviewing.create_review_table("tasks")
    record = {"outcome": source_state.PREDICTED, "source": PREDICTION["source"], "prediction": PREDICTION}
    task = review_queue.follow(table, 0.0, None, record)
    assert review_queue.follow(table, 0.0, record, record) == task
    (item,) = reviewing.tasks(table).values()
    assert (item["status"], item["reason"], item["content_hash"]) == (review.OPEN, review.REFERRED, "ab" * 32)
    assert json.dumps(item)  # plain JSON, numbers included
    review_queue.aws.client("dynamodb").update_item(
        TableName=table, Key=review_queue.encode({"pk": task, "sk": "task"}), UpdateExpression="SET #s = :r",
        ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":r": {"S": review.REVIEWED}})
    deleted = {"outcome": source_state.DELETED, "source": {**PREDICTION["source"], "version_id": None}}
    review_queue.follow(table, 0.0, record, deleted)
    assert reviewing.tasks(table)[task]["status"] == review.REVIEWED


def test_a_quality_control_task_keeps_the_rate_it_was_drawn_at(aws):
    """`cxr status` weighs a sampled verdict by 1 / rate (field_performance): the rate must be the one in force when
    the task was drawn, not whatever the deployment is set to later."""
    table = reviewing.create_review_table("qc-tasks")
    unreferred = {**PREDICTION, "refer_to_radiologist": False, "referral_reasons": []}
    record = {"outcome": source_state.PREDICTED, "source": PREDICTION["source"], "prediction": unreferred}
    assert review_queue.follow(table, 0.0, None, record) is None  # at rate 0 nothing is sampled
    task = review_queue.follow(table, 1.0, None, record)
    (item,) = reviewing.tasks(table).values()
    assert (item["pk"], item["reason"], item["sample_rate"]) == (task, review.QUALITY_CONTROL, 1.0)
    referred = {"outcome": source_state.PREDICTED, "prediction": PREDICTION,
                "source": {**PREDICTION["source"], "version_id": "v2"}}
    referred["prediction"] = {**PREDICTION, "source": referred["source"]}
    review_queue.follow(table, 0.5, None, referred)
    assert "sample_rate" not in [i for i in reviewing.tasks(table).values() if i["reason"] == review.REFERRED][0]
