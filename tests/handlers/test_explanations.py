"""Overlays beside predictions: kept for referred cases under EXPLAIN_REFERRALS, always when the upload asks."""

import base64
import io
import json

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY
from handlers.test_predict import (  # noqa: F401 (fixtures)
    ANSWER,
    BUCKET,
    current,
    endpoint,
    inference,
    invoke,
    prediction_key,
    read_json,
)
from handlers.test_predict_async import asynchronous, complete, land, queue  # noqa: F401 (fixtures)
from PIL import Image

import corpus
from cxr.local import s3_events
from infra import wiring
from ingested import name_of
from lambdas.domain import imaging, layout
from lambdas.domain.settings import Settings


def overlay_key(key: str) -> str:
    return layout.overlay_key(name_of(key, BUCKET))


def overlay_png(shade: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (shade, 0, 0)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def explained(pneumonia: float, shade: int = 200) -> dict:
    """An answer with an overlay; the model's rule refers it when p(pneumonia) is inside ANSWER's band."""
    low, high = ANSWER["referral_band"]
    refer = low <= pneumonia <= high
    return ANSWER | {"pneumonia_probability": pneumonia, "refer_to_radiologist": refer,
                     "referral_reasons": ["near_threshold"] if refer else [],
                     "explanation": {"method": "class activation map", "overlay_png": overlay_png(shade)}}


def answer_json(stubber, body: dict, sent: bytes):
    """An InvokeEndpoint that must carry inference.py's JSON request asking for the overlay of ``sent``."""
    payload = json.dumps(body).encode()
    request = json.dumps({"image": base64.b64encode(imaging.normalise(sent).wire_png).decode(), "explain": True})
    stubber.add_response("invoke_endpoint",
                         {"Body": StreamingBody(io.BytesIO(payload), len(payload)), "ContentType": "application/json"},
                         {"EndpointName": "cxr-endpoint", "ContentType": "application/json",
                          "Accept": "application/json", "Body": request.encode()})


def upload(key: str, body: bytes, explain: bool = False) -> dict:
    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key=key, Body=body, Metadata={layout.EXPLAIN_METADATA: "true"} if explain else {})
    return s3_events.record_for_object(s3, BUCKET, key)


def shade_of(key: str) -> int:
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return Image.open(io.BytesIO(body)).getpixel((0, 0))[0]


@pytest.fixture
def referrals_explained(monkeypatch):
    monkeypatch.setenv(wiring.ENV_EXPLAIN_REFERRALS, "true")


def test_a_referred_prediction_gets_its_overlay_beside_the_json(referrals_explained, endpoint,  # noqa: F811
                                                                lambda_context):
    body = corpus.png(seed=1)
    answer_json(endpoint, explained(0.5), body)
    invoke(lambda_context, upload("incoming/ward/a.png", body))
    prediction = read_json(prediction_key("incoming/ward/a.png"))
    assert prediction["refer_to_radiologist"] is True
    assert prediction["explanation"]["overlay_key"] == overlay_key("incoming/ward/a.png")
    assert shade_of(overlay_key("incoming/ward/a.png")) == 200
    item = boto3.client("dynamodb").scan(TableName="predictions")["Items"][0]
    assert "overlay_png" not in item["record"]["S"]  # the PNG never goes into the 400 KB item


def test_a_confident_prediction_keeps_no_overlay(referrals_explained, endpoint, lambda_context):  # noqa: F811
    body = corpus.png(seed=2)
    answer_json(endpoint, explained(0.9), body)
    invoke(lambda_context, upload("incoming/b.png", body))
    assert "explanation" not in read_json(prediction_key("incoming/b.png"))
    assert current("predictions/") == [prediction_key("incoming/b.png")]


def test_an_upload_that_asks_gets_its_overlay_and_a_newer_version_retires_it(endpoint,  # noqa: F811
                                                                             lambda_context):
    first = corpus.png(seed=3)
    answer_json(endpoint, explained(0.95), first)  # not referred, EXPLAIN_REFERRALS unset: kept because asked
    invoke(lambda_context, upload("incoming/c.png", first, explain=True))
    assert current("predictions/") == [prediction_key("incoming/c.png"), overlay_key("incoming/c.png")]
    endpoint.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(json.dumps(ANSWER).encode()),
                                                                    len(json.dumps(ANSWER))),
                                              "ContentType": "application/json"},
                          {"EndpointName": "cxr-endpoint", "ContentType": "image/png", "Accept": "application/json",
                           "Body": ANY})
    invoke(lambda_context, upload("incoming/c.png", corpus.png(seed=4)))  # plain upload, nothing asked
    assert current("predictions/") == [prediction_key("incoming/c.png")]


def test_an_older_versions_late_result_does_not_replace_the_newer_overlay(referrals_explained,
                                                                          asynchronous,  # noqa: F811
                                                                          lambda_context):
    older = upload("incoming/v.png", corpus.png(seed=1))
    old_request = queue(asynchronous, older, content_type="application/json")
    invoke(lambda_context, older)
    newer = upload("incoming/v.png", corpus.png(seed=2))
    new_request = queue(asynchronous, newer, content_type="application/json")
    invoke(lambda_context, newer)
    pending = boto3.client("s3").get_object(Bucket=BUCKET, Key=f"{layout.ASYNC_INPUT}{new_request}.png")
    assert json.loads(pending["Body"].read())["explain"] is True
    complete(lambda_context, land(f"{layout.ASYNC_OUTPUT}{new_request}.out", json.dumps(explained(0.5, 10)).encode()))
    complete(lambda_context, land(f"{layout.ASYNC_OUTPUT}{old_request}.out", json.dumps(explained(0.5, 99)).encode()))
    assert read_json(prediction_key("incoming/v.png"))["explanation"]["overlay_key"] == overlay_key("incoming/v.png")
    assert shade_of(overlay_key("incoming/v.png")) == 10


@pytest.mark.parametrize(("value", "expected"), [(None, False), ("true", True), ("false", False)])
def test_the_flag_reads_true_or_false(value, expected):
    env = {} if value is None else {wiring.ENV_EXPLAIN_REFERRALS: value}
    assert Settings.from_env(env).explain_referrals is expected


def test_any_other_flag_value_fails_the_cold_start():
    with pytest.raises(ValueError, match="EXPLAIN_REFERRALS"):
        Settings.from_env({wiring.ENV_EXPLAIN_REFERRALS: "yes"})
