"""The options the configuration offers synthesize, stay cdk-nag clean, and change what they should."""

from __future__ import annotations

import json

import pytest

from infra import asl, images, wiring

pytestmark = pytest.mark.slow

VARIANT = {
    "stage": "prod",
    "endpoint_mode": "async",
    "endpoint_instance_type": "ml.m5.xlarge",
    "training_instance_type": "ml.p3.2xlarge",
    "training_instance_count": 2,
    "training_spot": False,
    "reserved_concurrency": 5,
    "notification_email": "ops@example.org",
    "lambda_architecture": "arm64",
    "training_pretrained": False,
}


@pytest.fixture(scope="module")
def variant(module_dir, synth):
    """A second synthesis with every non-default option (after the session's, reusing its caches)."""
    from infra.app import build, make_app

    outdir = module_dir("variant.out")
    app = make_app(outdir=str(outdir), context={"cxr": VARIANT})
    stacks = build(app)
    assembly = app.synth()  # cdk-nag raises here on any unacknowledged finding
    templates = {part: assembly.get_stack_by_name(stack.stack_name).template for part, stack in stacks.items()}
    return {**templates, "outdir": outdir}


def functions(template: dict) -> dict:
    return {r["Properties"]["Handler"]: r["Properties"] for r in template["Resources"].values()
            if r["Type"] == "AWS::Lambda::Function" and "Handler" in r["Properties"]
            and r["Properties"]["Handler"].startswith("lambdas.")}


def test_training_without_spot_on_an_instance_without_nvme_gets_a_volume_key(variant):
    templates = [t for part, t in variant.items() if part != "outdir"]
    expression = asl.definition_expression(templates, wiring.STATE_MACHINE_ID)
    values = {r.name: f"<{r.name}>" for r in asl.references(templates, expression)}
    values.update({"AWS::Region": "us-east-1", "AWS::AccountId": "1", "AWS::Partition": "aws"})
    train = json.loads(asl.definition(templates, values, wiring.STATE_MACHINE_ID))["States"][wiring.TRAIN_STATE]
    params = train["Parameters"]
    assert params["EnableManagedSpotTraining"] is False and "MaxWaitTimeInSeconds" not in params["StoppingCondition"]
    assert params["ResourceConfig"]["VolumeKmsKeyId"].startswith("<Key")
    assert params["ResourceConfig"]["InstanceType"] == "ml.p3.2xlarge"
    assert params["ResourceConfig"]["InstanceCount"] == 2
    code = json.loads(asl.definition(templates, values, wiring.STATE_MACHINE_ID))["States"][wiring.READ_REQUEST_STATE][
        "Parameters"]["code"]  # merged into the job's hyperparameters: torchrun over both instances' GPUs
    assert code["sagemaker_torch_distributed_enabled"] == "true"
    assert code["sagemaker_instance_type"] == '"ml.p3.2xlarge"'
    assert "cxr-prod-data-" in params["OutputDataConfig"]["S3OutputPath.$"]
    assert "pretrained" not in {c["ChannelName"] for c in params["InputDataConfig"]}
    # two instances: each streams its own part of the training shards; validation and test whole, read by rank 0
    channels = {c["ChannelName"]: (c["InputMode"], c["DataSource"]["S3DataSource"]) for c in params["InputDataConfig"]}
    for name in ("train", "validation", "test"):
        mode, source = channels[name]
        assert (mode, source["S3DataType"], source["S3Uri.$"]) == ("FastFile", "S3Prefix", f"$.dataset.shards.{name}")
        assert source["S3DataDistributionType"] == ("ShardedByS3Key" if name == "train" else "FullyReplicated")
    assert channels["benchmark"][0] == "File" and channels["benchmark"][1]["S3DataType"] == "ManifestFile"


def test_async_endpoints_use_the_cpu_image_and_an_output_location(variant):
    env = functions(variant["pipeline"])[wiring.DEPLOY_MODEL.handler]["Environment"]["Variables"]
    assert env[wiring.ENV_ENDPOINT_MODE] == "async"
    assert env[wiring.ENV_INFERENCE_IMAGE]["Fn::FindInMap"][2] == images.INFERENCE_CPU  # inference.py: CPU only
    assert env[wiring.ENV_ENDPOINT_INSTANCE_TYPE] == "ml.m5.xlarge"
    assert env[wiring.ENV_ENDPOINT_NAME] == "cxr-prod"


def test_reserved_concurrency_applies_to_the_event_driven_functions_only(variant):
    for part, spec in (("ingest", wiring.PREPROCESS), ("inference", wiring.PREDICT)):
        assert functions(variant[part])[spec.handler]["ReservedConcurrentExecutions"] == 5
    assert all("ReservedConcurrentExecutions" not in f for f in functions(variant["pipeline"]).values())


def test_arm64_functions_get_a_bundle_built_for_arm64(variant):
    for part in ("ingest", "inference", "pipeline"):
        assert all(f["Architectures"] == ["arm64"] for f in functions(variant[part]).values())
    (bundle,) = [p for p in variant["outdir"].glob("asset.*") if (p / "lambdas").is_dir()]
    native = [p.name for p in (bundle / "numpy").rglob("*.so")]
    assert native and all("x86_64" not in name for name in native)
    assert any("aarch64" in name for name in native)


def test_the_notification_address_is_subscribed(variant):
    (subscription,) = [r["Properties"] for r in variant["storage"]["Resources"].values()
                       if r["Type"] == "AWS::SNS::Subscription"]
    assert subscription == {**subscription, "Protocol": "email", "Endpoint": "ops@example.org"}


def role_statements(template: dict, role_id: str) -> list[dict]:
    return [s for r in template["Resources"].values()
            if r["Type"] == "AWS::IAM::Policy" and {"Ref": role_id} in r["Properties"]["Roles"]
            for s in r["Properties"]["PolicyDocument"]["Statement"]]


def function_statements(template: dict, handler: str) -> list[dict]:
    [function] = [r for r in template["Resources"].values()
                  if r["Type"] == "AWS::Lambda::Function" and r["Properties"].get("Handler") == handler]
    return role_statements(template, function["Properties"]["Role"]["Fn::GetAtt"][0])


def model_role_statements(template: dict) -> list[dict]:
    [role_id] = [lid for lid, r in template["Resources"].items() if r["Type"] == "AWS::IAM::Role"
                 and r["Properties"].get("Description") == "cxr SageMaker models and endpoints"]
    return role_statements(template, role_id)


def granted(statements: list[dict], action: str) -> str:
    """The resources ``action`` is allowed on, as text (bucket ARNs are joins with the account and region)."""
    return json.dumps([s["Resource"] for s in statements
                       if action in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])])


def test_async_mode_queues_requests_through_s3_with_the_permissions_each_side_needs(variant, synth):
    from lambdas.domain import layout

    predict = function_statements(variant["inference"], wiring.PREDICT.handler)
    assert "endpoint/cxr-prod" in granted(predict, "sagemaker:InvokeEndpointAsync")
    assert granted(predict, "sagemaker:InvokeEndpoint") == "[]"  # an asynchronous endpoint refuses it
    assert layout.ASYNC_INPUT in granted(predict, "s3:PutObject")
    assert layout.ASYNC_REQUESTS in granted(predict, "s3:PutObject")
    assert functions(variant["inference"])[wiring.PREDICT.handler]["Environment"]["Variables"][
        wiring.ENV_ENDPOINT_MODE] == "async"

    [notifications] = [r["Properties"] for r in variant["inference"]["Resources"].values()
                       if r["Type"] == "Custom::S3BucketNotifications"]
    prefixes = {c["Filter"]["Key"]["FilterRules"][0]["Value"]
                for c in notifications["NotificationConfiguration"]["LambdaFunctionConfigurations"]}
    assert prefixes == {layout.INCOMING, layout.ASYNC_OUTPUT}
    complete = function_statements(variant["inference"], wiring.COMPLETE_PREDICTION.handler)
    for prefix in (layout.ASYNC_OUTPUT, layout.ASYNC_REQUESTS):
        assert prefix in granted(complete, "s3:GetObject")
    assert layout.PREDICTIONS in granted(complete, "s3:PutObject")
    assert "PredictionsTable" in granted(complete, "dynamodb:PutItem")

    model = model_role_statements(variant["pipeline"])
    assert layout.ASYNC_INPUT in granted(model, "s3:GetObject")
    assert layout.ASYNC_OUTPUT in granted(model, "s3:PutObject")  # results, and failures under it
    assert granted(model, "kms:Encrypt") != "[]" and granted(model, "kms:GenerateDataKey") != "[]"

    serverless = function_statements(synth.template("inference"), wiring.PREDICT.handler)
    assert granted(serverless, "sagemaker:InvokeEndpointAsync") == "[]"
    assert "endpoint/cxr-dev" in granted(serverless, "sagemaker:InvokeEndpoint")
    assert "async" not in granted(serverless, "s3:PutObject")
    serverless_model = model_role_statements(synth.template("pipeline"))
    assert "async" not in json.dumps(serverless_model)  # of the inference bucket, Batch Transform's prefixes only
    assert layout.BATCH_OUTPUT in granted(serverless_model, "s3:PutObject")


def test_prod_locks_each_prediction_json_and_may_set_retention_only_there(variant, synth):
    """Stage prod: retention on by default, s3:PutObjectRetention on predictions/ only, never a bypass."""
    from infra.config import PROD_RETENTION_DAYS
    from lambdas.domain import layout

    for spec in (wiring.PREDICT, wiring.COMPLETE_PREDICTION):
        env = functions(variant["inference"])[spec.handler]["Environment"]["Variables"]
        assert env[wiring.ENV_PREDICTION_RETENTION_DAYS] == str(PROD_RETENTION_DAYS)
        statements = function_statements(variant["inference"], spec.handler)
        retention = granted(statements, "s3:PutObjectRetention")
        assert layout.PREDICTIONS in retention and layout.REJECTED not in retention
        assert layout.INCOMING not in retention
        assert granted(statements, "s3:BypassGovernanceRetention") == "[]"
        dev = function_statements(synth.template("inference"), spec.handler)
        assert granted(dev, "s3:PutObjectRetention") == "[]"  # dev writes no retention: no grant
        assert functions(synth.template("inference"))[spec.handler]["Environment"]["Variables"][
            wiring.ENV_PREDICTION_RETENTION_DAYS] == "0"
