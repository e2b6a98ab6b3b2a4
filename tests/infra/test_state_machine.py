"""The synthesized training pipeline, references resolved to local ARNs, executed by moto's Step Functions engine.

Lambda tasks run the real handlers: moto executes Lambda code only in Docker, so the one hook is
``LambdaFunction._invoke_lambda`` (what moto's ``Invoke`` calls), routed to the function's handler
with the environment moto recorded for it. moto refuses SageMaker's ``createTrainingJob.sync``
(the first test shows it); the other runs apply the local mode's one rewrite of that state
(``cxr.local.pipeline.localize_training_task``) with a stand-in job that writes a model archive, or fails
as SageMaker does (a refused request is ``SageMaker.AmazonSageMakerException``, throttling and validation alike).
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
from ingested import PSEUDONYM_SECRET, create_state_table, ingest, kermany_like
from lambdas.domain import layout

pytestmark = pytest.mark.slow

ACCOUNT, REGION = "123456789012", "us-east-1"
STAGE = "dev"
DATA = wiring.BUCKETS[wiring.DATA].name(STAGE, ACCOUNT, REGION)
INFERENCE = wiring.BUCKETS[wiring.INFERENCE].name(STAGE, ACCOUNT, REGION)
TRAINING = "LocalTraining"
GOOD = {"accuracy": 0.9, "macro_f1": 0.88,
        "binary": {"accuracy": 0.95, "roc_auc": 0.98, "sensitivity": 0.96, "specificity": 0.9},
        "decision": {"threshold": 0.5, "margin": 1.386, "band": [0.2, 0.8], "referral_rate": 0.1, "coverage": 0.9}}


STAND_IN_CALLS: list[dict] = []
"""Each Train attempt's event, in order (the tests clear it)."""
REFUSALS = {
    "throttled": "ThrottlingException: Rate exceeded (Service: AmazonSageMaker; Status Code: 400; "
                 "Error Code: ThrottlingException)",
    "invalid": "ValidationException: 1 validation error detected: Value 'ml.x' at 'resourceConfig.instanceType' "
               "failed to satisfy constraint (Service: AmazonSageMaker; Status Code: 400; "
               "Error Code: ValidationException)",
}


def training_stand_in(event, context):
    """What the SageMaker job leaves behind: ``model.tar.gz`` (with metrics.json) under the output path.

    Outcomes ``throttled`` and ``invalid`` refuse every attempt as CreateTrainingJob does;
    ``throttled-once`` refuses the first attempt only.
    """
    from cxr.local.training_task import SageMakerApiError

    STAND_IN_CALLS.append(event)
    outcome = os.environ["STAND_IN_OUTCOME"]
    if outcome in REFUSALS or (outcome == "throttled-once" and len(STAND_IN_CALLS) == 1):
        raise SageMakerApiError(REFUSALS[outcome.removesuffix("-once")])
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in event["InputDataConfig"]}
    s3 = boto3.client("s3")
    for name in ("train", "validation", "test"):  # S3Prefix channels of PrepareDataset's shards
        bucket, prefix = channels[name].removeprefix("s3://").split("/", 1)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
        assert bucket == DATA and keys and all(k.endswith(".tar") for k in keys)
    if outcome == "fail":
        raise RuntimeError("AlgorithmError: training diverged")
    metrics = {**GOOD, "accuracy": 0.4} if outcome == "weak" else GOOD
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
            error_type = getattr(exc, "error_type", type(exc).__name__)  # as cxr.local.functions reports it
            return json.dumps({"errorType": error_type, "errorMessage": str(exc)}), True, ""


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
        monkeypatch.setenv(wiring.ENV_SOURCE_STATE_TABLE, create_state_table("source-state"))  # for seed_dataset
        secret = boto3.client("secretsmanager").create_secret(Name="source-names", SecretString=PSEUDONYM_SECRET)
        monkeypatch.setenv(wiring.ENV_PSEUDONYM_SECRET, secret["ARN"])  # ingest names the uploads with it
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
            wiring.ENV_SOURCE_STATE_TABLE: "source-state",
            wiring.ENV_CODE_VERSION: "0.1.0+gtest",
            wiring.ENV_MODEL_PACKAGE_GROUP: wiring.model_package_group(STAGE),
            wiring.ENV_APPROVAL_MODE: "auto",
            wiring.ENV_CHAMPION_MARGIN: "0.02",
            wiring.ENV_RESCORE_DAYS: "0",
            wiring.ENV_INFERENCE_BUCKET: INFERENCE,
            wiring.ENV_PSEUDONYM_SECRET: secret["ARN"],
        }
        boto3.client("sagemaker").create_model_package_group(ModelPackageGroupName=wiring.model_package_group(STAGE))
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

    def state_machine(self, localize: bool, training_retry_wait_s: int | None = None) -> str:
        definition = json.loads(asl.definition(self.templates, self.values, wiring.STATE_MACHINE_ID))
        if localize:
            from cxr.local.pipeline import localize_training_task

            definition = localize_training_task(definition, self.arns[TRAINING])
        if training_retry_wait_s is not None:  # moto's engine really waits
            definition["States"][wiring.WAIT_TO_RETRY_TRAINING_STATE]["Seconds"] = training_retry_wait_s
        name = f"pipeline-{'local' if localize else 'synthesized'}"
        return boto3.client("stepfunctions").create_state_machine(
            name=name, definition=json.dumps(definition), roleArn=self.role)["stateMachineArn"]

    def run(self, state_machine: str, run_id: str, outcome: str = "good", request: dict | None = None) -> dict:
        boto3.client("lambda").update_function_configuration(
            FunctionName=TRAINING, Environment={"Variables": {"STAND_IN_OUTCOME": outcome}})
        sfn = boto3.client("stepfunctions")
        request = {"run_id": run_id, "dataset": "kermany"} if request is None else request
        STAND_IN_CALLS.clear()
        execution = sfn.start_execution(stateMachineArn=state_machine, name=run_id,
                                        input=json.dumps(request))["executionArn"]
        deadline = time.monotonic() + 60
        while (described := sfn.describe_execution(executionArn=execution))["status"] == "RUNNING":
            assert time.monotonic() < deadline, "the execution did not finish"
            time.sleep(0.2)
        return described

    @staticmethod
    def entered(execution: dict) -> list[str]:
        history = boto3.client("stepfunctions").get_execution_history(executionArn=execution["executionArn"])
        return [e["stateEnteredEventDetails"]["name"] for e in history["events"] if "stateEnteredEventDetails" in e]

    def notifications(self) -> list[dict]:
        messages = boto3.client("sqs").receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10)
        return [json.loads(json.loads(m["Body"])["Message"]) for m in messages.get("Messages", [])]


def seed_dataset(patients: int = 24) -> None:
    """A dataset as ingest leaves it: two classes, one image per patient."""
    ingest(DATA, kermany_like(patients, labels=("bacterial", "normal"), prefix="raw/kermany/"))


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
    assert cloud.entered(execution) == [wiring.READ_REQUEST_STATE, wiring.VALID_REQUEST_STATE,
                                        wiring.APPLY_DEFAULTS_STATE,
                                        wiring.PREPARE_DATASET_STATE, wiring.PACK_SHARDS_STATE,
                                        *[wiring.PACK_SHARD_STATE] * 3]  # one item a split; Train aborts the engine
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


@pytest.mark.parametrize("request_", [
    {"dataset": "kermany"}, {"run_id": "run-x"}, {},
    {"run_id": 7, "dataset": "kermany"}, {"run_id": "run-x", "dataset": None},
    *({"run_id": "run-x", "dataset": "kermany", "hyperparameters": value}
      for value in ("epochs=2", ["epochs", "2"], 2, True, None)),
    ["run-x", "kermany"],
])
def test_a_request_of_another_shape_is_refused_and_notified(cloud, request_):
    """Issue 13, item 10: a non-object ``hyperparameters`` failed Train's merge with States.Runtime, which no
    Catch sees; a missing field failed the first task's input path the same way. Now the request is checked
    first, the refusal is notified, and the execution fails with InvalidRequest and the contract as cause."""
    seed_dataset()
    execution = cloud.run(cloud.state_machine(localize=True), "run-invalid", request=request_)
    assert execution["status"] == "FAILED"
    assert execution.get("error") == "InvalidRequest" and '"run_id"' in execution["cause"], execution
    assert cloud.entered(execution) == [wiring.READ_REQUEST_STATE, wiring.VALID_REQUEST_STATE,
                                        wiring.NOTIFY_INVALID_REQUEST_STATE, wiring.INVALID_REQUEST_STATE]
    (message,) = cloud.notifications()
    assert message == {"outcome": "failed", "request": request_,
                       "error": {"Error": "InvalidRequest", "Cause": execution["cause"]}}
    assert not boto3.client("s3").list_objects_v2(Bucket=DATA, Prefix=layout.MANIFESTS).get("KeyCount")
    assert nothing_deployed()


@pytest.mark.parametrize("hyperparameters", [None, {}, {"epochs": "2"}])
def test_defaults_fill_what_the_request_leaves_out(cloud, hyperparameters):
    seed_dataset()
    request = {"run_id": "run-defaults", "dataset": "kermany"}
    if hyperparameters is not None:
        request["hyperparameters"] = hyperparameters
    execution = cloud.run(cloud.state_machine(localize=True), "run-defaults", request=request)
    assert execution["status"] == "SUCCEEDED", execution
    (call,) = STAND_IN_CALLS
    code = {"sagemaker_program", "sagemaker_submit_directory", "sagemaker_region", "sagemaker_container_log_level",
            "sagemaker_torch_distributed_enabled", "sagemaker_instance_type"}  # torchrun on the GPU type
    assert set(call["HyperParameters"]) == code | set(hyperparameters or {})
    assert json.loads(execution["output"])["request"]["hyperparameters"] == (hyperparameters or {})


def test_a_throttled_training_job_is_started_again(cloud):
    seed_dataset()
    execution = cloud.run(cloud.state_machine(localize=True, training_retry_wait_s=0), "run-throttled-once",
                          outcome="throttled-once")
    assert execution["status"] == "SUCCEEDED", execution
    assert cloud.entered(execution).count(wiring.TRAIN_STATE) == 2
    assert len({call["TrainingJobName"] for call in STAND_IN_CALLS}) == 2  # a new name per attempt
    (message,) = cloud.notifications()
    assert message["outcome"] == "deployed"


def test_throttling_is_retried_a_bounded_number_of_times_then_notified(cloud):
    from infra.stacks.pipeline import TRAINING_RETRIES

    seed_dataset()
    execution = cloud.run(cloud.state_machine(localize=True, training_retry_wait_s=0), "run-throttled",
                          outcome="throttled")
    assert execution["status"] == "FAILED"
    entered = cloud.entered(execution)
    assert entered.count(wiring.TRAIN_STATE) == 1 + TRAINING_RETRIES
    assert entered.count(wiring.WAIT_TO_RETRY_TRAINING_STATE) == TRAINING_RETRIES
    assert entered[-2:] == [wiring.NOTIFY_FAILURE_STATE, wiring.FAILED_STATE]
    (message,) = cloud.notifications()
    assert message["error"]["Error"] == "SageMaker.AmazonSageMakerException"
    assert "ThrottlingException" in message["error"]["Cause"]
    assert nothing_deployed()


def test_a_validation_error_is_not_retried(cloud):
    """Issue 13, item 10: Train retried SageMaker.AmazonSageMakerException, validation errors included, three
    times over seven minutes; a refused request now notifies at once."""
    seed_dataset()
    execution = cloud.run(cloud.state_machine(localize=True), "run-invalid-job", outcome="invalid")
    assert execution["status"] == "FAILED"
    entered = cloud.entered(execution)
    assert entered.count(wiring.TRAIN_STATE) == 1 and wiring.WAIT_TO_RETRY_TRAINING_STATE not in entered
    (message,) = cloud.notifications()
    assert message["error"]["Error"] == "SageMaker.AmazonSageMakerException"
    assert "ValidationException" in message["error"]["Cause"]
    assert len(STAND_IN_CALLS) == 1


def test_a_failed_packing_item_fails_the_run_before_training(cloud):
    """A processed PNG gone from the bucket: its item fails (not a transient error, so not retried), the Map's
    Catch notifies, and no training job starts."""
    seed_dataset()
    s3 = boto3.client("s3")
    key = s3.list_objects_v2(Bucket=DATA, Prefix="processed/kermany/")["Contents"][0]["Key"]
    s3.delete_object(Bucket=DATA, Key=key if key.endswith(".png") else key.removesuffix(".json") + ".png")
    execution = cloud.run(cloud.state_machine(localize=True), "run-packing-fails")
    assert execution["status"] == "FAILED"
    entered = cloud.entered(execution)
    assert wiring.PACK_SHARDS_STATE in entered and wiring.TRAIN_STATE not in entered
    (message,) = cloud.notifications()
    assert "NoSuchKey" in json.dumps(message["error"])
    assert not STAND_IN_CALLS


def test_train_retries_by_name_only_what_has_a_transient_name(synth):
    """SageMaker reports throttling and validation errors under one name: a Retry on it retries both."""
    from infra.stacks.pipeline import TRANSIENT_TRAINING_CAUSES

    templates = list(synth.templates.values())
    expression = asl.definition_expression(templates, wiring.STATE_MACHINE_ID)
    values = {r.name: r.name for r in asl.references(templates, expression)}
    values.update({"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws"})
    states = json.loads(asl.definition(templates, values, wiring.STATE_MACHINE_ID))["States"]
    retried = {name for retry in states[wiring.TRAIN_STATE]["Retry"] for name in retry["ErrorEquals"]}
    assert retried == {"SageMaker.ResourceLimitExceededException"}
    assert not any(text in REFUSALS["invalid"] for text in TRANSIENT_TRAINING_CAUSES)
    assert any(text in REFUSALS["throttled"] for text in TRANSIENT_TRAINING_CAUSES)
