"""The predict Lambda on moto (S3, DynamoDB, SSM), with the endpoint answering through a botocore Stubber."""

import io
import json

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

import corpus
from cxr.local import s3_events
from ingested import name_of
from lambdas import aws, predict
from lambdas.domain import imaging, layout

BUCKET = "cxr-inference"
ANSWER = {
    "label": "bacterial",
    "confidence": 0.71,
    "probabilities": {"bacterial": 0.71, "normal": 0.2, "viral": 0.09},
    "pneumonia_probability": 0.8,
    "refer_to_radiologist": False,
    "referral_reasons": [],
    "threshold": 0.3,
    "referral_band": [0.097, 0.632],
    "model_id": "model-test-1",
}


def prediction_key(key: str) -> str:
    return layout.prediction_key(name_of(key, BUCKET))


def rejected_key(key: str) -> str:
    return layout.rejected_key(name_of(key, BUCKET))


@pytest.fixture
def inference(aws, state_table, monkeypatch):
    s3, ddb = boto3.client("s3"), boto3.client("dynamodb")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    ddb.create_table(
        TableName="predictions",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.create_table(
        TableName="idempotency",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    boto3.client("ssm").put_parameter(Name="/cxr/endpoint", Value="cxr-endpoint", Type="String")
    monkeypatch.setenv("INFERENCE_BUCKET", BUCKET)
    monkeypatch.setenv("PREDICTIONS_TABLE", "predictions")
    monkeypatch.setenv("IDEMPOTENCY_TABLE", "idempotency")
    monkeypatch.setenv("ENDPOINT_PARAMETER", "/cxr/endpoint")
    predict._idempotent_predict.cache_clear()
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    yield
    predict._idempotent_predict.cache_clear()


@pytest.fixture
def endpoint(inference):
    """The SageMaker runtime client with a Stubber: queue answers or errors per expected call."""
    stubber = Stubber(aws.client("sagemaker-runtime"))
    with stubber:
        yield stubber
    stubber.assert_no_pending_responses()


def answer(stubber, body: dict = ANSWER, png: bytes | None = None):
    payload = json.dumps(body).encode()
    stubber.add_response(
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(payload), len(payload)), "ContentType": "application/json"},
        {"EndpointName": "cxr-endpoint", "ContentType": "image/png", "Accept": "application/json",
         "Body": png if png is not None else ANY},
    )


def upload(key: str, body: bytes) -> dict:
    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return s3_events.record_for_object(s3, BUCKET, key)


def read_json(key: str) -> dict:
    return json.loads(boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read())


def invoke(lambda_context, *records):
    return predict.handler(s3_events.event(*records), lambda_context)


def counts(**nonzero) -> dict:
    return {"predicted": 0, "submitted": 0, "rejected": 0, "removed": 0, "duplicate": 0, "superseded": 0,
            "deferred": 0, "skipped": 0, "transient": 0, **nonzero}


def current(prefix: str) -> list[str]:
    """Current objects under a prefix (tombstoned ones are hidden by their delete markers)."""
    listing = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_happy_path_writes_prediction_json_and_dynamodb_record(endpoint, lambda_context):
    body = corpus.jpeg(800, 600)
    answer(endpoint, png=imaging.normalise(body).wire_png)  # the endpoint receives the normalised pixels
    record = upload("incoming/ward 3/x+ray.jpeg", body)
    assert invoke(lambda_context, record)["predicted"] == 1
    prediction = read_json(prediction_key("incoming/ward 3/x+ray.jpeg"))
    assert prediction["label"] == "bacterial" and prediction["confidence"] == 0.71
    assert prediction["probabilities"] == ANSWER["probabilities"]
    assert prediction["pneumonia_probability"] == 0.8 and prediction["refer_to_radiologist"] is False
    assert prediction["model_id"] == "model-test-1" and prediction["endpoint"] == "cxr-endpoint"
    name = name_of("incoming/ward 3/x+ray.jpeg", BUCKET)
    assert prediction["source"]["name"] == name and prediction["source"]["version_id"]
    assert "ward" not in json.dumps(prediction)  # the record names its upload, never keys it
    assert prediction["latency_ms"]["total"] >= prediction["latency_ms"]["endpoint"] >= 0
    item = boto3.client("dynamodb").get_item(
        TableName="predictions",
        Key={"pk": {"S": f"{BUCKET}/{name}"}, "sk": {"S": prediction["source"]["version_id"]}},
    )["Item"]
    assert item["label"]["S"] == "bacterial" and item["refer_to_radiologist"]["BOOL"] is False
    assert json.loads(item["record"]["S"])["model_id"] == "model-test-1"


def test_the_record_carries_the_models_referral_and_the_rule_that_fired(endpoint, lambda_context):
    """The endpoint decides by the model's own rule; the Lambda records it and applies no band of its own."""
    referred = {"label": "bacterial", "confidence": 0.12, "probabilities": {"bacterial": 0.12, "normal": 0.807,
                                                                              "viral": 0.073},
                "pneumonia_probability": 0.193, "refer_to_radiologist": True,
                "referral_reasons": ["near_threshold", "label_not_most_probable"], "threshold": 0.163,
                "referral_band": [0.046, 0.438]}
    answer(endpoint, ANSWER | referred)
    answer(endpoint, ANSWER | {"pneumonia_probability": 0.5})  # a 0.5 the model's rule leaves unreferred stays so
    invoke(lambda_context, upload("incoming/a.png", corpus.png()))
    invoke(lambda_context, upload("incoming/b.png", corpus.png(seed=1)))
    record = read_json(prediction_key("incoming/a.png"))
    assert record["refer_to_radiologist"] is True
    assert record["referral_reasons"] == ["near_threshold", "label_not_most_probable"]
    assert (record["threshold"], record["referral_band"]) == (0.163, [0.046, 0.438])
    assert "uncertainty_band" not in record
    item = boto3.client("dynamodb").get_item(TableName="predictions", Key={
        "pk": {"S": f"{BUCKET}/{name_of('incoming/a.png', BUCKET)}"},
        "sk": {"S": record["source"]["version_id"]}})["Item"]
    assert [r["S"] for r in item["referral_reasons"]["L"]] == ["near_threshold", "label_not_most_probable"]
    assert read_json(prediction_key("incoming/b.png"))["refer_to_radiologist"] is False


def test_an_endpoint_older_than_the_rule_gets_every_case_referred(endpoint, lambda_context):
    """Its answer has no referral: the label is recorded, never without a radiologist."""
    answer(endpoint, {k: v for k, v in ANSWER.items() if k not in predict.REFERRAL_FIELDS})
    invoke(lambda_context, upload("incoming/a.png", corpus.png()))
    record = read_json(prediction_key("incoming/a.png"))
    assert record["refer_to_radiologist"] is True and record["referral_reasons"] == [predict.MODEL_WITHOUT_RULE]
    assert record["threshold"] is None and record["referral_band"] is None


def test_an_out_of_distribution_input_is_referred_and_counted(endpoint, lambda_context, capsys):
    guard = {"score": 41.5, "threshold": 30.2, "flagged": True}
    answer(endpoint, ANSWER | {"pneumonia_probability": 0.95, "out_of_distribution": guard,  # the model's rule:
                               "refer_to_radiologist": True, "referral_reasons": ["out_of_distribution"]})
    answer(endpoint)  # an older model: no guard in its answer
    capsys.readouterr()
    assert invoke(lambda_context, upload("incoming/photo.png", corpus.png()),
                  upload("incoming/b.png", corpus.png(seed=1)))["predicted"] == 2
    flagged, plain = read_json(prediction_key("incoming/photo.png")), read_json(prediction_key("incoming/b.png"))
    assert flagged["refer_to_radiologist"] is True and flagged["referral_reasons"] == ["out_of_distribution"]
    assert flagged["out_of_distribution"] == guard
    assert plain["refer_to_radiologist"] is False and plain["out_of_distribution"] is None
    metrics = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert metrics[-1]["OutOfDistribution"] == [1.0] and metrics[-1]["Predictions"] == [2.0]


def test_bad_input_is_rejected_with_reason_and_kept(endpoint, lambda_context):
    records = [upload("incoming/report.pdf", corpus.minimal_pdf()), upload("incoming/empty.png", b"")]
    assert invoke(lambda_context, *records) == counts(rejected=2)
    assert read_json(rejected_key("incoming/report.pdf"))["reason"] == "unsupported_format"
    assert read_json(rejected_key("incoming/empty.png"))["reason"] == "empty"
    originals = [key for key in current("incoming/") if not key.startswith("incoming/.names/")]
    assert originals == ["incoming/empty.png", "incoming/report.pdf"]  # kept


def test_duplicate_events_invoke_the_endpoint_once(endpoint, lambda_context):
    answer(endpoint)  # exactly one call queued: a second call would fail the Stubber
    record = upload("incoming/dup.png", corpus.png())
    invoke(lambda_context, record, record)
    first = read_json(prediction_key("incoming/dup.png"))
    invoke(lambda_context, record)
    assert read_json(prediction_key("incoming/dup.png")) == first


def test_reordered_versions_show_the_newest(endpoint, lambda_context):
    older = upload("incoming/v.png", corpus.png(seed=1))
    newer = upload("incoming/v.png", corpus.png(seed=2))
    answer(endpoint, ANSWER | {"model_id": "for-newer"})  # one call: the older version is never current again
    assert invoke(lambda_context, newer) == counts(predicted=1)
    assert invoke(lambda_context, older) == counts(superseded=1)
    prediction = read_json(prediction_key("incoming/v.png"))
    assert prediction["model_id"] == "for-newer"
    assert prediction["source"]["version_id"] == newer["s3"]["object"]["versionId"]
    assert len(boto3.client("dynamodb").scan(TableName="predictions")["Items"]) == 1


@pytest.mark.parametrize("order", ["in order", "newest first"])
def test_a_good_version_then_a_bad_one_leaves_only_the_rejection(endpoint, lambda_context, order):
    good = upload("incoming/x.png", corpus.png())
    if order == "in order":
        answer(endpoint)
        invoke(lambda_context, good)
        assert current("predictions/") == [prediction_key("incoming/x.png")]
    bad = upload("incoming/x.png", corpus.minimal_pdf())
    invoke(lambda_context, *((bad, good) if order == "newest first" else (bad,)))
    assert current("predictions/") == [] and current("rejected/") == [rejected_key("incoming/x.png")]
    assert read_json(rejected_key("incoming/x.png"))["source"]["version_id"] == bad["s3"]["object"]["versionId"]


def test_a_bad_version_then_a_good_one_leaves_only_the_prediction(endpoint, lambda_context):
    invoke(lambda_context, upload("incoming/x.png", b""))
    answer(endpoint)
    good = upload("incoming/x.png", corpus.png())
    assert invoke(lambda_context, good) == counts(predicted=1)
    assert current("rejected/") == [] and current("predictions/") == [prediction_key("incoming/x.png")]
    assert read_json(prediction_key("incoming/x.png"))["source"]["version_id"] == good["s3"]["object"]["versionId"]


def test_a_delete_retires_the_prediction_and_keeps_its_record(endpoint, lambda_context):
    answer(endpoint)
    invoke(lambda_context, upload("incoming/x.png", corpus.png()))
    marker = boto3.client("s3").delete_object(Bucket=BUCKET, Key="incoming/x.png")["VersionId"]
    removed = s3_events.object_created_record(BUCKET, "incoming/x.png", 0, version_id=marker,
                                              event_name="ObjectRemoved:DeleteMarkerCreated")
    assert invoke(lambda_context, removed) == counts(removed=1)
    assert current("predictions/") == []
    assert len(boto3.client("dynamodb").scan(TableName="predictions")["Items"]) == 1  # the audit trail stays
    versions = boto3.client("s3").list_object_versions(Bucket=BUCKET, Prefix="incoming/x")["Versions"]
    assert len(versions) == 1  # the upload itself is kept


def test_a_duplicate_delivery_is_counted_as_duplicate(endpoint, lambda_context):
    answer(endpoint)
    record = upload("incoming/d.png", corpus.png())
    assert invoke(lambda_context, record, record) == counts(predicted=1, duplicate=1)


def test_endpoint_throttling_is_raised_for_retry_then_succeeds(endpoint, lambda_context):
    record = upload("incoming/t.png", corpus.png())
    endpoint.add_client_error("invoke_endpoint", service_error_code="ThrottlingException", http_status_code=400)
    with pytest.raises(aws.TransientError):
        invoke(lambda_context, record)
    endpoint.add_client_error("invoke_endpoint", service_error_code="ModelError", http_status_code=424)
    with pytest.raises(aws.TransientError):
        invoke(lambda_context, record)
    answer(endpoint)
    assert invoke(lambda_context, record)["predicted"] == 1  # the idempotency record was released on failure


def test_malformed_endpoint_answer_is_retried(endpoint, lambda_context):
    answer(endpoint, {"label": "normal"})
    with pytest.raises(aws.TransientError):
        invoke(lambda_context, upload("incoming/m.png", corpus.png()))


def test_missing_configuration_fails_loudly(inference, lambda_context, monkeypatch):
    monkeypatch.delenv("ENDPOINT_PARAMETER")
    with pytest.raises(RuntimeError, match="ENDPOINT_PARAMETER"):
        invoke(lambda_context, upload("incoming/c.png", corpus.png()))


def test_the_endpoint_call_outlasts_the_invocation_limit_and_the_function_outlasts_its_retries():
    from infra import wiring

    config = aws.client("sagemaker-runtime").meta.config
    # InvokeEndpoint gives the model 60 s; AWS's API reference: set the SDK socket timeout to 70 s for such a model
    assert config.read_timeout >= 70
    worst = config.retries["total_max_attempts"] * (config.connect_timeout + config.read_timeout) + (
        config.retries["total_max_attempts"] - 1) * aws.MAX_BACKOFF_S
    assert worst == aws.endpoint_call_budget_s()
    assert wiring.PREDICT.timeout_s >= worst + 60  # a minute for the download, normalisation and writes
