"""endpoint_mode=async on moto: the predict Lambda queues each request in S3, CompletePrediction writes the record."""

import json

import boto3
import pytest
from botocore.stub import Stubber
from handlers.test_predict import (  # noqa: F401 (fixtures)
    ANSWER,
    BUCKET,
    answer,
    counts,
    current,
    endpoint,
    inference,
    invoke,
    prediction_key,
    read_json,
    rejected_key,
    upload,
)

import corpus
from cxr.local import s3_events
from infra import wiring
from ingested import name_of
from lambdas import aws, complete_prediction, predict
from lambdas.domain import imaging, layout
from lambdas.s3io import SourceObject


@pytest.fixture
def asynchronous(inference, monkeypatch):  # noqa: F811
    monkeypatch.setenv(wiring.ENV_ENDPOINT_MODE, "async")
    stubber = Stubber(aws.client("sagemaker-runtime"))
    with stubber:
        yield stubber
    stubber.assert_no_pending_responses()


def queue(stubber, record: dict, png: bytes | None = None, content_type: str = "image/png") -> str:
    """Expect one InvokeEndpointAsync for ``record``'s object; returns its request id."""
    request = predict.request_id(SourceObject.from_record(_parsed(record)))
    expected = {"EndpointName": "cxr-endpoint", "ContentType": content_type, "Accept": "application/json",
                "InputLocation": f"s3://{BUCKET}/{layout.ASYNC_INPUT}{request}.png", "InferenceId": request,
                "Filename": f"{request}.out"}
    stubber.add_response("invoke_endpoint_async", {
        "InferenceId": request, "OutputLocation": f"s3://{BUCKET}/{layout.ASYNC_OUTPUT}{request}.out",
        "FailureLocation": f"s3://{BUCKET}/{layout.ASYNC_FAILURES}{request}-error.out"}, expected)
    return request


def land(key: str, body: bytes) -> dict:
    """What the asynchronous endpoint does when it has answered: an object under async-output/ and its event."""
    boto3.client("s3").put_object(Bucket=BUCKET, Key=key, Body=body)
    return s3_events.record_for_object(boto3.client("s3"), BUCKET, key)


def complete(lambda_context, *records):
    return complete_prediction.handler(s3_events.event(*records), lambda_context)


def test_the_request_is_queued_with_its_input_in_s3(asynchronous, lambda_context):
    body = corpus.jpeg(800, 600)
    record = upload("incoming/ward 3/x+ray.jpeg", body)
    request = queue(asynchronous, record)
    assert invoke(lambda_context, record) == counts(submitted=1)
    s3 = boto3.client("s3")
    png = s3.get_object(Bucket=BUCKET, Key=f"{layout.ASYNC_INPUT}{request}.png")["Body"].read()
    assert png == imaging.normalise(body).wire_png  # the endpoint reads the normalised PNG, as the sync path sends it
    pending = read_json(f"{layout.ASYNC_REQUESTS}{request}.json")
    assert pending["source"]["name"] == name_of("incoming/ward 3/x+ray.jpeg", BUCKET)
    assert "ward" not in json.dumps(pending) and pending["endpoint"] == "cxr-endpoint"  # the request keys nothing
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=layout.PREDICTIONS)  # not predicted yet


def test_the_result_completes_the_record_exactly_as_the_sync_path_writes_it(asynchronous, lambda_context,
                                                                            monkeypatch):
    record = upload("incoming/a.png", corpus.png(seed=3))
    request = queue(asynchronous, record)
    invoke(lambda_context, record)
    assert complete(lambda_context, land(f"{layout.ASYNC_OUTPUT}{request}.out", json.dumps(ANSWER).encode())) == {
        "predicted": 1, "skipped": 0}
    queued = read_json(prediction_key("incoming/a.png"))

    monkeypatch.setenv(wiring.ENV_ENDPOINT_MODE, "serverless")
    answer(asynchronous)
    invoke(lambda_context, upload("incoming/b.png", corpus.png(seed=4)))
    direct = read_json(prediction_key("incoming/b.png"))

    assert set(queued) == set(direct) and set(queued["latency_ms"]) == set(direct["latency_ms"])
    variable = {"source", "predicted_at", "latency_ms"}
    assert {k: v for k, v in queued.items() if k not in variable} == {
        k: v for k, v in direct.items() if k not in variable}
    assert queued["source"] == {**SourceObject.from_record(_parsed(record)).describe(),
                                "name": name_of("incoming/a.png", BUCKET)}
    assert queued["latency_ms"]["total"] >= queued["latency_ms"]["endpoint"] >= 0
    items = boto3.client("dynamodb").scan(TableName="predictions")["Items"]
    assert len(items) == 2 and {frozenset(item) for item in items} == {frozenset(items[0])}


def test_a_duplicate_upload_event_queues_once(asynchronous, lambda_context):
    record = upload("incoming/dup.png", corpus.png())
    queue(asynchronous, record)  # one call queued: a second would fail the Stubber
    assert invoke(lambda_context, record, record) == counts(submitted=1, duplicate=1)
    assert invoke(lambda_context, record) == counts(duplicate=1)


def test_an_older_versions_late_result_does_not_replace_the_newer_prediction(asynchronous, lambda_context):
    older = upload("incoming/v.png", corpus.png(seed=1))
    old_request = queue(asynchronous, older)
    invoke(lambda_context, older)
    newer = upload("incoming/v.png", corpus.png(seed=2))
    new_request = queue(asynchronous, newer)
    invoke(lambda_context, newer)
    complete(lambda_context, land(f"{layout.ASYNC_OUTPUT}{new_request}.out",
                                  json.dumps(ANSWER | {"model_id": "for-newer"}).encode()))
    complete(lambda_context, land(f"{layout.ASYNC_OUTPUT}{old_request}.out",
                                  json.dumps(ANSWER | {"model_id": "for-older"}).encode()))
    assert read_json(prediction_key("incoming/v.png"))["model_id"] == "for-newer"
    assert len(boto3.client("dynamodb").scan(TableName="predictions")["Items"]) == 2  # both answers recorded


def test_a_result_for_a_version_replaced_by_a_bad_one_is_not_current(asynchronous, lambda_context):
    good = upload("incoming/v.png", corpus.png(seed=1))
    request = queue(asynchronous, good)
    invoke(lambda_context, good)
    invoke(lambda_context, upload("incoming/v.png", corpus.minimal_pdf()))
    complete(lambda_context, land(f"{layout.ASYNC_OUTPUT}{request}.out", json.dumps(ANSWER).encode()))
    assert current("predictions/") == [] and current("rejected/") == [rejected_key("incoming/v.png")]


def test_a_failure_the_endpoint_writes_is_raised_for_retry_and_the_dead_letter_queue(asynchronous, lambda_context):
    event = land(f"{layout.ASYNC_FAILURES}abc-error.out", b"Received client error (400) from primary: bad input")
    with pytest.raises(complete_prediction.AsyncInferenceFailed, match="bad input"):
        complete(lambda_context, event)


def test_a_result_without_its_request_is_an_error(asynchronous, lambda_context):
    with pytest.raises(complete_prediction.UnknownAsyncResult):
        complete(lambda_context, land(f"{layout.ASYNC_OUTPUT}nobody.out", json.dumps(ANSWER).encode()))


def test_a_malformed_result_is_an_error(asynchronous, lambda_context):
    record = upload("incoming/m.png", corpus.png())
    request = queue(asynchronous, record)
    invoke(lambda_context, record)
    with pytest.raises(predict.EndpointResponseError, match="lacks"):
        complete(lambda_context, land(f"{layout.ASYNC_OUTPUT}{request}.out", b'{"label": "normal"}'))


def test_an_endpoint_writing_elsewhere_is_reported_at_once(asynchronous, lambda_context):
    record = upload("incoming/w.png", corpus.png())
    asynchronous.add_response("invoke_endpoint_async", {"InferenceId": "x", "OutputLocation": "s3://b/other/x.out"})
    with pytest.raises(aws.TransientError):
        invoke(lambda_context, record)


def _parsed(record: dict):
    from aws_lambda_powertools.utilities.data_classes import S3Event

    return next(S3Event(s3_events.event(record)).records)
