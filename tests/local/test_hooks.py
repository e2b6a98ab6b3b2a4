"""The moto hooks of the offline cloud: they must match the pinned moto, and S3 events must reach real handlers."""

import json

import boto3
import pytest

import corpus
from cxr import source_names
from cxr.local import cloud as local_cloud
from cxr.local import hooks
from infra import wiring
from infra.config import Config
from lambdas.domain import layout


def test_hook_points_match_the_pinned_moto():
    hooks.check()  # raises the moment a moto upgrade moves or reshapes a hooked function


def test_hook_check_fails_on_a_moved_function(monkeypatch):
    monkeypatch.delattr(hooks.s3_notifications, "_invoke_awslambda")
    with pytest.raises(RuntimeError, match="_invoke_awslambda is gone"):
        hooks.check()


def test_hook_check_notices_when_moto_implements_a_missing_action(monkeypatch):
    monkeypatch.setattr(hooks.sagemaker_responses.SageMakerResponse, "update_endpoint", lambda self: None,
                        raising=False)
    with pytest.raises(RuntimeError, match="moto now implements SageMakerResponse.update_endpoint"):
        hooks.check()


@pytest.fixture
def cloud(tmp_path):
    with local_cloud.start(Config.demo(stage="test"), tmp_path) as running:
        yield running


def test_uploads_reach_the_real_preprocess_handler_with_real_events(cloud):
    s3 = boto3.client("s3")
    bucket = cloud.names.bucket(wiring.DATA)
    s3.put_object(Bucket=bucket, Key="raw/ds/PNEUMONIA/person7_virus_1 (a+b).png", Body=corpus.png())
    s3.put_object(Bucket=bucket, Key="raw/ds/NORMAL/notes.txt", Body=b"not an image")
    s3.put_object(Bucket=bucket, Key="elsewhere/NORMAL/x.png", Body=corpus.png())  # no trigger outside raw/
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    [metadata] = [k for k in keys if k.startswith("processed/") and k.endswith(".json")]
    record = json.loads(s3.get_object(Bucket=bucket, Key=metadata)["Body"].read())
    name_of = source_names.namer(boto3.client("secretsmanager"), "test", bucket)
    assert record["source"]["name"] == name_of("raw/ds/PNEUMONIA/person7_virus_1 (a+b).png")
    assert record["source"]["version_id"]  # the hooked event carries the version, as S3's does
    assert (record["label"], record["patient_id"]) == ("viral", "7")
    assert layout.quarantine_key("raw/ds", name_of("raw/ds/NORMAL/notes.txt")) in keys
    assert not [k for k in keys if "elsewhere" in k and k != "elsewhere/NORMAL/x.png"]


def test_failing_async_invocation_is_retried_then_dead_lettered(cloud, monkeypatch):
    # No model is deployed yet, so the endpoint parameter is missing: the predict handler fails every time.
    calls = []
    run_function = cloud.run_function
    monkeypatch.setattr(cloud, "run_function", lambda *args: calls.append(args[1]) or run_function(*args))
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    s3.put_object(Bucket=cloud.names.bucket(wiring.INFERENCE), Key="incoming/x.png", Body=corpus.png())
    keys = [event["Records"][0]["s3"]["object"]["key"] for event in calls]
    assert keys == ["incoming/x.png"] * (1 + wiring.ASYNC_RETRIES)  # its name's pointer invokes nothing here
    queue = sqs.get_queue_url(QueueName=cloud.names.dead_letter_queue(wiring.PREDICT))["QueueUrl"]
    [message] = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, MessageAttributeNames=["All"])[
        "Messages"]
    assert json.loads(message["Body"])["Records"][0]["s3"]["object"]["key"] == "incoming/x.png"
    assert message["MessageAttributes"]["ErrorType"]["StringValue"] == "GetParameterError"


def test_stop_training_job_sends_sigterm_to_the_running_job(tmp_path):
    import subprocess
    import types

    from cxr.local.training import LocalTrainingJobs

    jobs = LocalTrainingJobs(tmp_path)
    job = types.SimpleNamespace(training_job_name="cxr-0-x", training_job_status="InProgress", secondary_status="")
    process = subprocess.Popen(["sleep", "30"])
    jobs._started(job, process)
    jobs.stop(job)
    assert process.wait(timeout=5) == -15  # SIGTERM, as SageMaker stops a job
    assert job.training_job_status == "Stopping"


def test_stop_training_job_action_exists_on_the_offline_cloud(cloud):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="Could not find training job"):
        boto3.client("sagemaker").stop_training_job(TrainingJobName="cxr-0-missing")


@pytest.mark.parametrize("instance_type, accepted", [("ml.c6i.large", True), ("ml.m5.xlarge", True),
                                                     ("ml.c6i.nonsense", False)])
def test_endpoint_instance_types_are_aws_own_list_not_motos(cloud, instance_type, accepted):
    """moto 5.2.5 refuses ml.c6i.large, the realtime default AWS serves; the offline cloud checks botocore's enum."""
    sagemaker = boto3.client("sagemaker")
    sagemaker.create_model(ModelName="m", ExecutionRoleArn=cloud.names.model_role_arn,
                           PrimaryContainer={"Image": "local/cxr-inference:latest"})
    create = lambda: sagemaker.create_endpoint_config(  # noqa: E731
        EndpointConfigName="c", ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "m",
                                                     "InstanceType": instance_type, "InitialInstanceCount": 1}])
    if accepted:
        create()
    else:
        with pytest.raises(sagemaker.exceptions.ClientError, match="ProductionVariantInstanceType"):
            create()
