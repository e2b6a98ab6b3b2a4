"""The synthesized training pipeline, references resolved to local ARNs, executed by moto's Step Functions engine.

Lambda tasks run the real handlers: moto executes Lambda code only in Docker, so the one hook is
``LambdaFunction._invoke_lambda`` (what moto's ``Invoke`` calls), routed to the function's handler
with the environment moto recorded for it. moto refuses SageMaker's ``createTrainingJob.sync``
(the first test shows it); the other runs apply the local mode's one rewrite of that state
(``cxr.local.pipeline.localize_training_task``) with a stand-in job that writes a model archive.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import tarfile
import time
import zipfile
from contextlib import contextmanager
from unittest import mock

import boto3
import pytest

from infra import asl, wiring
from lambdas.domain import layout

pytestmark = pytest.mark.slow

ACCOUNT, REGION = "123456789012", "us-east-1"
STAGE = "dev"
DATA = wiring.BUCKETS[wiring.DATA].name(STAGE, ACCOUNT, REGION)
INFERENCE = wiring.BUCKETS[wiring.INFERENCE].name(STAGE, ACCOUNT, REGION)
TRAINING = "LocalTraining"
GOOD = {"accuracy": 0.9, "macro_f1": 0.88,
        "binary": {"accuracy": 0.95, "roc_auc": 0.98, "sensitivity": 0.96, "specificity": 0.9}}


def training_stand_in(event, context):
    """What the SageMaker job leaves behind: ``model.tar.gz`` (with metrics.json) under the output path."""
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in event["InputDataConfig"]}
    s3 = boto3.client("s3")
    for name in ("train", "validation", "test"):
        bucket, key = channels[name].removeprefix("s3://").split("/", 1)
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        assert manifest[0]["prefix"] == f"s3://{DATA}/" and len(manifest) > 1
    if os.environ["STAND_IN_OUTCOME"] == "fail":
        raise RuntimeError("AlgorithmError: training diverged")
    metrics = GOOD if os.environ["STAND_IN_OUTCOME"] == "good" else {**GOOD, "accuracy": 0.4}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = json.dumps(metrics).encode()
        info = tarfile.TarInfo("metrics.json")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    bucket, prefix = event["OutputDataConfig"]["S3OutputPath"].removeprefix("s3://").split("/", 1)
    key = f"{prefix}{event['TrainingJobName']}/output/model.tar.gz"
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    return {"TrainingJobName": event["TrainingJobName"], "TrainingJobStatus": "Completed",
            "ModelArtifacts": {"S3ModelArtifacts": f"s3://{bucket}/{key}"}}


def run_handler(function, event):
    """moto's ``_invoke_lambda`` contract: (payload JSON, errored, logs)."""
    handler = function.run_time and function.handler
    env = function.environment_vars or {}
    with mock.patch.dict(os.environ, env):
        try:
            if handler == f"{__name__}.training_stand_in":
                result = training_stand_in(event, None)
            else:
                module, attribute = handler.rsplit(".", 1)
                result = getattr(importlib.import_module(module), attribute)(event, LambdaContextStub(function))
            return json.dumps(result), False, ""
        except Exception as exc:  # what the Lambda runtime reports for an unhandled exception
            return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}), True, ""


class LambdaContextStub:
    def __init__(self, function):
        self.function_name = function.function_name
        self.memory_limit_in_mb = function.memory_size
        self.invoked_function_arn = function.function_arn
        self.aws_request_id = "local"


@contextmanager
def lambda_runs_real_handlers():
    import moto.awslambda.models as models

    original = models.LambdaFunction._invoke_lambda  # the hook point must still exist, with this signature
    assert list(original.__code__.co_varnames[:2]) == ["self", "event"]

    def invoke(self, event=None):
        return run_handler(self, json.loads(event) if isinstance(event, str) else (event or {}))

    with mock.patch.object(models.LambdaFunction, "_invoke_lambda", invoke):
        yield


@pytest.fixture
def cloud(synth, monkeypatch):
    """moto with the resources the definition references, named as a deployment names them."""
    from moto import mock_aws

    from lambdas import aws as lambda_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}), lambda_runs_real_handlers():
        lambda_aws.reset_clients()
        s3 = boto3.client("s3")
        for bucket in (DATA, INFERENCE):
            s3.create_bucket(Bucket=bucket)
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        key = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
        topic = boto3.client("sns").create_topic(Name="notifications")["TopicArn"]
        sqs = boto3.client("sqs")
        queue = sqs.create_queue(QueueName="inbox")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        boto3.client("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        boto3.client("ssm").put_parameter(Name=wiring.endpoint_parameter_name(STAGE), Value=wiring.NO_ENDPOINT,
                                          Type="String")
        iam = boto3.client("iam")
        role = iam.create_role(RoleName="local", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        environments = {
            wiring.ENV_DATA_BUCKET: DATA,
            wiring.ENV_QUALITY_GATE: json.dumps({"accuracy": 0.8, "binary.roc_auc": 0.9}),
            wiring.ENV_SAGEMAKER_ROLE_ARN: role,
            wiring.ENV_KMS_KEY_ARN: key,
            wiring.ENV_INFERENCE_IMAGE: "image",
            wiring.ENV_ENDPOINT_NAME: wiring.endpoint_name(STAGE),
            wiring.ENV_ENDPOINT_MODE: "serverless",
            wiring.ENV_SERVERLESS_MEMORY_MB: "3072",
            wiring.ENV_SERVERLESS_MAX_CONCURRENCY: "5",
            wiring.ENV_ENDPOINT_INSTANCE_TYPE: "ml.g4dn.xlarge",
            wiring.ENV_ASYNC_OUTPUT_URI: f"s3://{INFERENCE}/{wiring.ASYNC_OUTPUT_PREFIX}",
            wiring.ENV_ENDPOINT_PARAMETER: wiring.endpoint_parameter_name(STAGE),
            wiring.ENV_RESOURCE_PREFIX: wiring.resource_prefix(STAGE),
        }
        zipped = io.BytesIO()
        with zipfile.ZipFile(zipped, "w") as archive:
            archive.writestr("handler.py", "")  # moto stores code; the hook runs the repository's handlers
        arns = {}
        for function_id in [*wiring.TASK_FUNCTIONS.values(), TRAINING]:
            spec = wiring.FUNCTIONS.get(function_id)
            arns[function_id] = boto3.client("lambda").create_function(
                FunctionName=function_id, Runtime="python3.12", Role=role, Code={"ZipFile": zipped.getvalue()},
                Handler=spec.handler if spec else f"{__name__}.training_stand_in",
                Environment={"Variables": {k: environments[k] for k in spec.environment} if spec else
                             {"STAND_IN_OUTCOME": "good"}},
            )["FunctionArn"]
        templates = list(synth.templates.values())
        expression = asl.definition_expression(templates, wiring.STATE_MACHINE_ID)
        values = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws"}
        for reference in asl.references(templates, expression):
            if reference.resource_type == "AWS::Lambda::Function":
                (function_id,) = [f for f in wiring.TASK_FUNCTIONS.values() if f in reference.path.split("/")]
                values[reference.name] = arns[function_id]
            elif reference.resource_type == "AWS::IAM::Role":
                values[reference.name] = role
            elif reference.resource_type == "AWS::KMS::Key":
                values[reference.name] = key
            elif reference.resource_type == "AWS::SNS::Topic":
                values[reference.name] = topic
        yield Cloud(templates, values, arns, role, queue)
    lambda_aws.reset_clients()


class Cloud:
    def __init__(self, templates, values, arns, role, queue):
        self.templates, self.values, self.arns, self.role, self.queue = templates, values, arns, role, queue

    def state_machine(self, localize: bool) -> str:
        definition = json.loads(asl.definition(self.templates, self.values, wiring.STATE_MACHINE_ID))
        if localize:
            from cxr.local.pipeline import localize_training_task

            definition = localize_training_task(definition, self.arns[TRAINING])
        name = f"pipeline-{'local' if localize else 'synthesized'}"
        return boto3.client("stepfunctions").create_state_machine(
            name=name, definition=json.dumps(definition), roleArn=self.role)["stateMachineArn"]

    def run(self, state_machine: str, run_id: str, outcome: str = "good", request: dict | None = None) -> dict:
        boto3.client("lambda").update_function_configuration(
            FunctionName=TRAINING, Environment={"Variables": {"STAND_IN_OUTCOME": outcome}})
        sfn = boto3.client("stepfunctions")
        request = {"run_id": run_id, "dataset": "kermany"} if request is None else request
        execution = sfn.start_execution(stateMachineArn=state_machine, name=run_id,
                                        input=json.dumps(request))["executionArn"]
        deadline = time.monotonic() + 60
        while (described := sfn.describe_execution(executionArn=execution))["status"] == "RUNNING":
            assert time.monotonic() < deadline, "the execution did not finish"
            time.sleep(0.2)
        return described

    def notifications(self) -> list[dict]:
        messages = boto3.client("sqs").receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10)
        return [json.loads(json.loads(m["Body"])["Message"]) for m in messages.get("Messages", [])]


def seed_dataset(patients: int = 24) -> None:
    """Sidecars as ingest writes them: two classes, one image per patient."""
    s3 = boto3.client("s3")
    for i in range(patients):
        label = "normal" if i % 2 else "bacterial"
        image_id = f"{i:064x}"
        record = {"label": label, "patient_id": str(i), "content_hash": image_id, "split": None,
                  "processed_key": layout.processed_key("kermany", label, image_id)}
        s3.put_object(Bucket=DATA, Key=layout.processed_metadata_key("kermany", label, image_id),
                      Body=json.dumps(record).encode())


def nothing_deployed() -> bool:
    sagemaker = boto3.client("sagemaker")
    parameter = boto3.client("ssm").get_parameter(Name=wiring.endpoint_parameter_name(STAGE))["Parameter"]["Value"]
    return (not sagemaker.list_endpoints()["Endpoints"] and not sagemaker.list_models()["Models"]
            and parameter == wiring.NO_ENDPOINT)


def test_moto_refuses_the_synchronous_training_integration(cloud):
    """As synthesized, the definition parses and runs up to Train, where moto's engine aborts (hence the rewrite).

    The day a moto upgrade runs ``createTrainingJob.sync``, this fails and the rewrite can go.
    """
    seed_dataset()
    execution = cloud.run(cloud.state_machine(localize=False), "synthesized-1")
    assert execution["status"] == "FAILED"
    reason = execution.get("cause", "") + execution.get("error", "")
    assert "Unsupported sync callback procedure" in reason and "sagemaker:createTrainingJob.sync" in reason
    history = boto3.client("stepfunctions").get_execution_history(executionArn=execution["executionArn"])["events"]
    entered = [e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e]
    assert entered == [wiring.READ_REQUEST_STATE, wiring.VALID_REQUEST_STATE,
                       wiring.PREPARE_DATASET_STATE]  # Train aborts the engine itself
    assert nothing_deployed()


def test_a_good_model_is_deployed_and_published(cloud):
    seed_dataset()
    execution = cloud.run(cloud.state_machine(localize=True), "run-good")
    assert execution["status"] == "SUCCEEDED", execution
    output = json.loads(execution["output"])
    assert output["evaluation"]["passed"] is True
    job = output["training"]["TrainingJobName"]
    assert job.startswith(f"{wiring.resource_prefix(STAGE)}0-")  # the stage's own names, which its IAM grants
    assert output["endpoint"]["ready"] is True
    endpoint = boto3.client("sagemaker").describe_endpoint(EndpointName=wiring.endpoint_name(STAGE))
    assert endpoint["EndpointConfigName"] == job
    config = boto3.client("sagemaker").describe_endpoint_config(EndpointConfigName=job)
    assert "ServerlessConfig" in config["ProductionVariants"][0]
    parameter = boto3.client("ssm").get_parameter(Name=wiring.endpoint_parameter_name(STAGE))["Parameter"]["Value"]
    assert parameter == wiring.endpoint_name(STAGE)
    (message,) = cloud.notifications()
    assert message["outcome"] == "deployed" and message["model"] == job
    report = boto3.client("s3").get_object(Bucket=DATA, Key=f"{layout.REPORTS}run-good/gate.json")
    assert json.loads(report["Body"].read())["passed"] is True


def test_a_model_below_the_gate_is_not_deployed(cloud):
    seed_dataset()
    execution = cloud.run(cloud.state_machine(localize=True), "run-weak", outcome="weak")
    assert execution["status"] == "SUCCEEDED"
    assert json.loads(execution["output"])["evaluation"]["passed"] is False
    (message,) = cloud.notifications()
    assert message["outcome"] == "rejected" and message["failures"] == ["accuracy 0.4000 < 0.8000"]
    assert nothing_deployed()


@pytest.mark.parametrize("outcome", ["fail", "no-dataset"])
def test_a_failure_notifies_and_deploys_nothing(cloud, outcome):
    if outcome != "no-dataset":
        seed_dataset()
    execution = cloud.run(cloud.state_machine(localize=True), f"run-{outcome}", outcome=outcome)
    assert execution["status"] == "FAILED"
    (message,) = cloud.notifications()
    assert message["outcome"] == "failed"
    expected = "RuntimeError" if outcome == "fail" else "DatasetError"
    assert message["error"]["Error"] == expected
    assert nothing_deployed()


@pytest.mark.parametrize("request_", [{"dataset": "kermany"}, {"run_id": "run-x"}, {}])
def test_an_incomplete_request_fails_at_once_with_the_contract(cloud, request_):
    """Without the check a missing field failed the first task's input path with an uncatchable States.Runtime."""
    seed_dataset()
    execution = cloud.run(cloud.state_machine(localize=True), "run-incomplete", request=request_)
    assert execution["status"] == "FAILED"
    assert execution["error"] == "InvalidRequest" and '"run_id"' in execution["cause"]
    history = boto3.client("stepfunctions").get_execution_history(executionArn=execution["executionArn"])["events"]
    entered = [e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e]
    assert entered == [wiring.READ_REQUEST_STATE, wiring.VALID_REQUEST_STATE, wiring.INVALID_REQUEST_STATE]
    assert not boto3.client("s3").list_objects_v2(Bucket=DATA, Prefix=layout.MANIFESTS).get("KeyCount")
    assert nothing_deployed()
