"""endpoint_mode=async on the offline cloud: an asynchronous endpoint serves only InvokeEndpointAsync, as on AWS.

A tiny model (seconds of CPU training) is deployed by the real deploy and status functions; an upload
under ``incoming/`` then goes predict Lambda -> InvokeEndpointAsync -> the model's own ``inference.py`` on
the input in S3 -> result in ``async-output/`` -> CompletePrediction -> ``predictions/<key>.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from cxr import operations, source_names
from cxr.local import cloud as local_cloud
from infra import wiring
from infra.config import Config
from lambdas.domain import layout

pytestmark = pytest.mark.slow
STAGE = "async"
TINY = {"architecture": "compact", "width": 8, "image-size": 32, "epochs": 2, "batch-size": 8, "threads": 1}
XRAY = min(Path("samples/kermany-val16").rglob("*.jpeg"))


@pytest.fixture(scope="module")
def model_archive(module_dir) -> Path:
    from training import synthetic

    from cxr import training_run

    work = module_dir("tiny-model")
    staged = training_run.stage_dataset(synthetic.write_dataset(work / "xrays", per_class=10), work / "staged",
                                        workers=1)
    model_dir = training_run.run_training_job(staged.channels, TINY, work / "job")
    return training_run.pack_model(model_dir, work / "model.tar.gz")


def invoke(function: wiring.Function, cloud, payload: dict) -> dict:
    response = boto3.client("lambda").invoke(FunctionName=cloud.names.function(function),
                                             Payload=json.dumps(payload).encode())
    result = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, result
    return result


@pytest.fixture(scope="module")
def cloud(module_dir, model_archive):
    """The offline cloud in async mode with the tiny model deployed, as the pipeline's last steps deploy it."""
    config = Config.demo(stage=STAGE, endpoint_mode="async")
    with local_cloud.start(config, module_dir("local")) as running:
        deploy(running, model_archive, STAGE)
        yield running


def deploy(running, model_archive: Path, stage: str, run_id: str = "run-1") -> dict:
    """The pipeline's last steps on a packed model: Evaluate (the artifact's digest), Deploy, EndpointStatus."""
    data = running.names.bucket(wiring.DATA)
    artifact = f"models/{run_id}/job/output/model.tar.gz"
    boto3.client("s3").upload_file(str(model_archive), data, artifact)
    evaluation = invoke(wiring.EVALUATE_MODEL, running, {"run_id": run_id, "model_artifact": f"s3://{data}/{artifact}"})
    deployment = invoke(wiring.DEPLOY_MODEL, running, {
        "run_id": run_id, "model_name": f"{wiring.resource_prefix(stage)}0-tiny",
        "model_artifact": f"s3://{data}/{artifact}", "artifact_sha256": evaluation["artifact_sha256"]})
    assert invoke(wiring.ENDPOINT_STATUS, running, deployment)["ready"] is True
    return evaluation


def test_the_deployed_configuration_is_asynchronous_with_outputs_in_the_inference_bucket(cloud):
    sagemaker = boto3.client("sagemaker")
    endpoint = sagemaker.describe_endpoint(EndpointName=wiring.endpoint_name(STAGE))
    output = sagemaker.describe_endpoint_config(
        EndpointConfigName=endpoint["EndpointConfigName"])["AsyncInferenceConfig"]["OutputConfig"]
    bucket = cloud.names.bucket(wiring.INFERENCE)
    assert output["S3OutputPath"] == f"s3://{bucket}/{layout.ASYNC_OUTPUT}"
    assert output["S3FailurePath"] == f"s3://{bucket}/{layout.ASYNC_FAILURES}"


def test_an_asynchronous_endpoint_refuses_a_synchronous_invoke(cloud):
    with pytest.raises(ClientError) as refused:
        boto3.client("sagemaker-runtime").invoke_endpoint(
            EndpointName=wiring.endpoint_name(STAGE), ContentType="image/png", Body=XRAY.read_bytes())
    assert refused.value.response["Error"]["Code"] == "ValidationError"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "InvokeEndpointAsync" in refused.value.response["Error"]["Message"]


def test_an_upload_is_predicted_through_the_asynchronous_endpoint(cloud):
    s3, bucket = boto3.client("s3"), cloud.names.bucket(wiring.INFERENCE)
    name_of = source_names.namer(boto3.client("secretsmanager"), STAGE, bucket)
    [prediction] = operations.predict_files(s3, bucket, [XRAY], name_of, timeout_s=60).values()
    assert prediction["status"] == "predicted", prediction
    assert prediction["endpoint"] == wiring.endpoint_name(STAGE)
    assert prediction["source"]["name"] == name_of(f"incoming/0000/{XRAY.name}")  # each file its own key
    assert prediction["label"] in ("bacterial", "normal", "viral")
    assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-4
    results = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=layout.ASYNC_OUTPUT)["Contents"]
               if not o["Key"].startswith(layout.ASYNC_FAILURES)]
    [result] = results
    head = s3.head_object(Bucket=bucket, Key=result)
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == cloud.kms_key_arn
    assert json.loads(s3.get_object(Bucket=bucket, Key=result)["Body"].read())["model_id"] == prediction["model_id"]
    items = boto3.client("dynamodb").scan(TableName=cloud.names.table(wiring.PREDICTIONS_TABLE))["Items"]
    assert len(items) == 1 and items[0]["label"]["S"] == prediction["label"]


def test_a_request_the_model_fails_lands_in_the_failure_path_and_the_dead_letter_queue(cloud):
    s3, bucket = boto3.client("s3"), cloud.names.bucket(wiring.INFERENCE)
    s3.put_object(Bucket=bucket, Key=f"{layout.ASYNC_INPUT}broken.png", Body=b"not a PNG")
    response = boto3.client("sagemaker-runtime").invoke_endpoint_async(
        EndpointName=wiring.endpoint_name(STAGE), InputLocation=f"s3://{bucket}/{layout.ASYNC_INPUT}broken.png",
        ContentType="image/png", InferenceId="broken")
    failure = response["FailureLocation"]
    assert failure == f"s3://{bucket}/{layout.ASYNC_FAILURES}broken-error.out"
    sqs = boto3.client("sqs")
    queue = sqs.get_queue_url(QueueName=cloud.names.dead_letter_queue(wiring.COMPLETE_PREDICTION))["QueueUrl"]
    messages = _wait(lambda: sqs.receive_message(QueueUrl=queue, MessageAttributeNames=["All"]).get("Messages"))
    [message] = messages
    assert message["MessageAttributes"]["ErrorType"]["StringValue"] == "AsyncInferenceFailed"
    assert json.loads(message["Body"])["Records"][0]["s3"]["object"]["key"] == failure.split(f"{bucket}/", 1)[1]


def _wait(poll, timeout_s: float = 60):
    """The endpoint works on its own thread, as an asynchronous endpoint works after the call returns."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = poll()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out")
