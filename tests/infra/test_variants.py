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
    "training_spot": False,
    "reserved_concurrency": 5,
    "notification_email": "ops@example.org",
    "lambda_architecture": "arm64",
    "training_pretrained": False,
}


@pytest.fixture(scope="module")
def variant(tmp_path_factory, synth):
    """A second synthesis with every non-default option (after the session's, reusing its caches)."""
    from infra.app import build, make_app

    outdir = tmp_path_factory.mktemp("variant.out")
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
    assert "cxr-prod-data-" in params["OutputDataConfig"]["S3OutputPath.$"]
    assert "pretrained" not in {c["ChannelName"] for c in params["InputDataConfig"]}


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
    (bundle,) = [p for p in variant["outdir"].glob("asset.*") if p.is_dir()]
    native = [p.name for p in (bundle / "numpy").rglob("*.so")]
    assert native and all("x86_64" not in name for name in native)
    assert any("aarch64" in name for name in native)


def test_the_notification_address_is_subscribed(variant):
    (subscription,) = [r["Properties"] for r in variant["storage"]["Resources"].values()
                       if r["Type"] == "AWS::SNS::Subscription"]
    assert subscription == {**subscription, "Protocol": "email", "Endpoint": "ops@example.org"}
