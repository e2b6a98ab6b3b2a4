"""The offline cloud is built from the same names and wiring as the CDK stacks: compare it with the templates."""

import json

import boto3
import pytest

from cxr.local import cloud as local_cloud
from cxr.local import pipeline
from infra import asl, wiring
from infra.config import Config

DEPLOYED = wiring.deployed_functions(Config.demo(stage="e2e").endpoint_mode)

PSEUDO = {"AWS::AccountId": local_cloud.ACCOUNT, "AWS::Region": local_cloud.REGION, "AWS::Partition": "aws"}


@pytest.fixture(scope="module")
def cloud(synthesized, module_dir):
    config = Config.demo(stage="e2e", prediction_retention_days=7)  # as conftest's synthesis
    with local_cloud.start(config, module_dir("local")) as running:
        running.install_pipeline(synthesized)
        yield running


def resources(synthesized, kind: str) -> dict[str, dict]:
    return {lid: r for t in synthesized.templates for lid, r in t["Resources"].items() if r["Type"] == kind}


def deployed_function(synthesized, function: wiring.Function) -> tuple[str, dict]:
    [(logical_id, resource)] = [
        (lid, r) for lid, r in resources(synthesized, "AWS::Lambda::Function").items()
        if r["Properties"].get("Handler") == function.handler
        and function.id in r["Metadata"]["aws:cdk:path"].split("/")
    ]
    return logical_id, resource["Properties"]


@pytest.mark.parametrize("function", DEPLOYED, ids=lambda f: f.id)
def test_functions_agree(synthesized, cloud, function):
    _, deployed = deployed_function(synthesized, function)
    local = boto3.client("lambda").get_function_configuration(FunctionName=cloud.names.function(function))
    assert local["Handler"] == deployed["Handler"]
    assert (local["MemorySize"], local["Timeout"]) == (deployed["MemorySize"], deployed["Timeout"])
    assert set(local["Environment"]["Variables"]) == set(deployed["Environment"]["Variables"])
    for name in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL", "ENDPOINT_NAME",
                 "QUALITY_GATE", "ENDPOINT_MODE"):
        if isinstance(deployed["Environment"]["Variables"].get(name), str):
            assert local["Environment"]["Variables"][name] == deployed["Environment"]["Variables"][name], name


def test_bucket_names_and_triggers_agree(synthesized, cloud):
    functions_by_logical_id = {deployed_function(synthesized, f)[0]: f for f in DEPLOYED}
    notifications = resources(synthesized, "Custom::S3BucketNotifications").values()
    assert notifications
    for resource in notifications:
        bucket = asl.resolve(resource["Properties"]["BucketName"], PSEUDO)
        local = boto3.client("s3").get_bucket_notification_configuration(Bucket=bucket)
        expected = []
        for c in resource["Properties"]["NotificationConfiguration"]["LambdaFunctionConfigurations"]:
            function = functions_by_logical_id[c["LambdaFunctionArn"]["Fn::GetAtt"][0]]
            expected.append((c["Events"], c["Filter"], cloud.names.function_arn(function)))
        actual = [(c["Events"], c["Filter"], c["LambdaFunctionArn"]) for c in local["LambdaFunctionConfigurations"]]
        assert actual == expected


def test_asynchronous_retry_policy_agrees(synthesized, cloud):
    configs = resources(synthesized, "AWS::Lambda::EventInvokeConfig").values()
    assert {(c["Properties"]["MaximumRetryAttempts"], c["Properties"]["MaximumEventAgeInSeconds"]) for c in configs} \
        == {(wiring.ASYNC_RETRIES, wiring.MAX_EVENT_AGE_S)}
    for function in DEPLOYED:
        _, deployed = deployed_function(synthesized, function)
        has_dlq = "DeadLetterConfig" in deployed
        assert has_dlq == (cloud.dead_letter_queues.get(cloud.names.function(function)) is not None), function.id
        if function.trigger:
            local = boto3.client("lambda").get_function_event_invoke_config(FunctionName=cloud.names.function(function))
            assert (local["MaximumRetryAttempts"], local["MaximumEventAgeInSeconds"]) == (
                wiring.ASYNC_RETRIES, wiring.MAX_EVENT_AGE_S)


def test_state_machine_is_the_synthesized_one_but_for_the_training_task(synthesized, cloud):
    local = json.loads(boto3.client("stepfunctions").describe_state_machine(
        stateMachineArn=cloud.state_machine_arn)["definition"])
    values = pipeline.reference_values(synthesized, cloud.names, local_cloud.ACCOUNT, local_cloud.REGION,
                                       cloud.kms_key_arn)
    deployed = json.loads(asl.definition(synthesized.templates, values, wiring.STATE_MACHINE_ID))
    train = wiring.TRAIN_STATE
    assert deployed["States"][train]["Resource"] == "arn:aws:states:::sagemaker:createTrainingJob.sync"
    assert local["States"][train].pop("Resource") == cloud.names.training_task_arn
    deployed["States"][train].pop("Resource")
    assert local == deployed
