"""The request counts `cxr cost` bills for the predict path, checked against the predict Lambda's real calls."""

import math
from collections import Counter

import pytest
from handlers.test_predict import answer, endpoint, inference, invoke, upload  # noqa: F401 (fixtures)

import corpus
from cxr import costs
from lambdas import aws


@pytest.fixture
def calls():
    """Every S3 and DynamoDB operation the Lambda's clients send, with its parameters."""
    seen = []

    def record(event_name, params, **kwargs):
        seen.append((event_name.split(".")[-2], event_name.split(".")[-1], params))

    for service in ("s3", "dynamodb"):
        aws.client(service).meta.events.register(f"provide-client-params.{service}.*", record)
    yield seen
    for service in ("s3", "dynamodb"):
        aws.client(service).meta.events.unregister(f"provide-client-params.{service}.*", record)


def item_bytes(item: dict) -> int:
    """DynamoDB's item size, closely enough: attribute names plus their values' bytes."""
    return sum(len(name) + len(str(next(iter(value.values()))).encode()) for name, value in item.items())


def test_one_prediction_makes_the_requests_the_cost_model_bills(endpoint, lambda_context, calls):  # noqa: F811
    answer(endpoint)
    record = upload("incoming/2026/ward-3/patient-000123/chest-pa-erect.jpeg", corpus.jpeg(800, 600))
    calls.clear()  # the client's own upload happened above: one of the model's PUTs
    assert invoke(lambda_context, record)["predicted"] == 1

    s3 = Counter(operation for service, operation, _ in calls if service == "s3")
    assert s3["HeadObject"] + s3["GetObject"] == costs.S3_GETS_PER_PREDICTION  # HEAD is billed as a GET
    assert s3["PutObject"] + 1 == costs.S3_PUTS_PER_PREDICTION
    assert set(s3) == {"HeadObject", "GetObject", "PutObject"}

    dynamodb = [(operation, params) for service, operation, params in calls if service == "dynamodb"]
    assert {operation for operation, _ in dynamodb} <= {"PutItem", "UpdateItem"}  # no reads billed
    units = 0
    for _, params in dynamodb:
        item = params.get("Item") or params.get("ExpressionAttributeValues", {})
        units += max(1, math.ceil(item_bytes(item) / 1024))
    assert units <= costs.DYNAMODB_WRITE_UNITS
    assert len(dynamodb) == 5  # the event, idempotency in progress and done, the predictions item, the outcome
