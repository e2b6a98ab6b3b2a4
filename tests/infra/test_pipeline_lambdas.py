"""The pipeline-step Lambdas on moto: the quality gate and the create-or-update deployment."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from types import SimpleNamespace

import boto3
import pytest

from infra import wiring
from infra.config import DEFAULT_GATE

PREFIX = wiring.resource_prefix("test")
"""Stage ``test``'s SageMaker names, as the Train state makes them."""

METRICS = {
    "accuracy": 0.88,
    "macro_f1": 0.86,
    "roc_auc": 0.95,
    "binary": {"accuracy": 0.93, "roc_auc": 0.97, "sensitivity": 0.95, "specificity": 0.86},
    "decision": {"threshold": 0.163, "margin": 1.386, "band": [0.046, 0.438], "referral_rate": 0.1, "coverage": 0.9},
}


def model_archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def evaluate_env(data_bucket, monkeypatch):
    monkeypatch.setenv(wiring.ENV_DATA_BUCKET, data_bucket)
    monkeypatch.setenv(wiring.ENV_QUALITY_GATE, json.dumps(DEFAULT_GATE))
    return data_bucket


def put_model(bucket: str, files: dict[str, bytes], key="models/run-1/job/output/model.tar.gz") -> str:
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=model_archive(files))
    return f"s3://{bucket}/{key}"


def test_gate_passes_a_good_model_and_writes_the_report(evaluate_env, lambda_context):
    from lambdas import evaluate_model

    # weights come first in a real archive: the reader must stream past them
    uri = put_model(evaluate_env, {"model.pt": b"\0" * 200_000, "./metrics.json": json.dumps(METRICS).encode()})
    out = evaluate_model.handler({"run_id": "run-1", "model_artifact": uri}, lambda_context)
    assert out["passed"] is True and out["failures"] == []
    assert {c["metric"] for c in out["checks"]} == set(DEFAULT_GATE)
    report = boto3.client("s3").get_object(Bucket=evaluate_env, Key="reports/run-1/gate.json")["Body"].read()
    report = json.loads(report)
    assert report["passed"] is True
    stored = boto3.client("s3").get_object(Bucket=evaluate_env, Key="reports/run-1/metrics.json")["Body"].read()
    assert json.loads(stored) == METRICS


def test_the_evaluation_report_in_the_archive_is_published_beside_the_verdict(evaluate_env, lambda_context):
    from lambdas import evaluate_model

    page = b"<!DOCTYPE html><html><body>report</body></html>"
    # SageMaker tars the model directory: report/ may come after the weights, metrics.json before or after
    uri = put_model(evaluate_env, {"./metrics.json": json.dumps(METRICS).encode(), "model.pt": b"\0" * 200_000,
                                   "./report/report.html": page})
    evaluate_model.handler({"run_id": "run-3", "model_artifact": uri}, lambda_context)
    stored = boto3.client("s3").get_object(Bucket=evaluate_env, Key="reports/run-3/report.html")
    assert stored["Body"].read() == page and stored["ContentType"].startswith("text/html")
    uri = put_model(evaluate_env, {"metrics.json": json.dumps(METRICS).encode()}, key="models/run-4/j/model.tar.gz")
    evaluate_model.handler({"run_id": "run-4", "model_artifact": uri}, lambda_context)  # older archives: no report
    listed = boto3.client("s3").list_objects_v2(Bucket=evaluate_env, Prefix="reports/run-4/")["Contents"]
    assert sorted(o["Key"] for o in listed) == ["reports/run-4/gate.json", "reports/run-4/metrics.json"]


def test_the_gate_records_the_packed_archives_sha256(evaluate_env, lambda_context, monkeypatch):
    """The digest is of the whole object as stored (weights after metrics.json included), in output and report."""
    from lambdas import evaluate_model

    monkeypatch.setenv(wiring.ENV_CODE_VERSION, "0.1.0+gabc")
    archive = model_archive({"metrics.json": json.dumps(METRICS).encode(), "model.onnx": bytes(range(256)) * 4000})
    boto3.client("s3").put_object(Bucket=evaluate_env, Key="models/run-9/model.tar.gz", Body=archive)
    out = evaluate_model.handler({"run_id": "run-9", "model_artifact": f"s3://{evaluate_env}/models/run-9/model.tar.gz"},
                                 lambda_context)
    assert out["artifact_sha256"] == hashlib.sha256(archive).hexdigest()
    report = boto3.client("s3").get_object(Bucket=evaluate_env, Key="reports/run-9/gate.json")["Body"].read()
    report = json.loads(report)
    assert report["artifact_sha256"] == out["artifact_sha256"] and report["code_version"] == "0.1.0+gabc"


def test_gate_rejects_low_and_missing_metrics(evaluate_env, lambda_context):
    from lambdas import evaluate_model

    weak = {**METRICS, "accuracy": 0.70}
    del weak["binary"]
    uri = put_model(evaluate_env, {"metrics.json": json.dumps(weak).encode()})
    out = evaluate_model.handler({"run_id": "run-2", "model_artifact": uri}, lambda_context)
    assert out["passed"] is False
    assert "accuracy 0.7000 < 0.8300" in out["failures"]
    assert "binary.sensitivity is missing from metrics.json" in out["failures"]


@pytest.mark.parametrize(("decision", "problem"), [
    (None, "records no decision rule"),
    ({"threshold": 0.163, "margin": 0, "band": [0.163, 0.163]}, "decision.margin 0 is not a positive number"),
    ({"threshold": None, "margin": 1.386, "band": [0.2, 0.8]}, "decision.threshold None is not inside (0, 1)"),
    ({"threshold": 0.163, "margin": 1.386, "band": [0.2, 0.8]}, "does not contain the threshold 0.163"),
    ({"threshold": 0.9, "margin": 1.386, "band": [0.2, 0.8]}, "does not contain the threshold 0.9"),
    ({"threshold": 0.5, "margin": 1.386, "band": "0.2,0.8"}, "decision.band '0.2,0.8' does not contain"),
])
def test_gate_refuses_a_model_whose_decision_rule_cannot_be_served(evaluate_env, lambda_context, decision, problem):
    """Whatever the metrics, a band apart from the threshold (the demo's 0.163 outside [0.2, 0.8]) is refused."""
    from lambdas import evaluate_model

    metrics = {k: v for k, v in METRICS.items() if k != "decision"} | ({"decision": decision} if decision else {})
    uri = put_model(evaluate_env, {"metrics.json": json.dumps(metrics).encode()})
    out = evaluate_model.handler({"run_id": "run-4", "model_artifact": uri}, lambda_context)
    assert out["passed"] is False and out["decision_rule"]["passed"] is False
    assert len(out["failures"]) == 1 and problem in out["failures"][0]


def test_a_model_without_a_normal_class_needs_only_its_margin():
    from lambdas.evaluate_model import decision_rule_problem

    assert decision_rule_problem({"decision": {"threshold": None, "margin": 1.386, "band": None}}) is None
    assert "does not contain" in decision_rule_problem({"binary": {}, "decision": {"threshold": 0.5, "margin": 1.386,
                                                                                   "band": None}})


def test_the_gate_can_bound_the_referral_rate(evaluate_env, monkeypatch, lambda_context):
    from lambdas import evaluate_model

    monkeypatch.setenv(wiring.ENV_QUALITY_GATE, json.dumps({"accuracy": 0.8, "decision.coverage": 0.95}))
    uri = put_model(evaluate_env, {"metrics.json": json.dumps(METRICS).encode()})
    out = evaluate_model.handler({"run_id": "run-5", "model_artifact": uri}, lambda_context)
    assert out["passed"] is False and out["failures"] == ["decision.coverage 0.9000 < 0.9500"]


def test_an_archive_without_metrics_is_an_error(evaluate_env, lambda_context):
    from lambdas import evaluate_model

    uri = put_model(evaluate_env, {"model.pt": b"weights"})
    with pytest.raises(evaluate_model.ModelArtifactError, match="no metrics.json"):
        evaluate_model.handler({"run_id": "run-3", "model_artifact": uri}, lambda_context)
    boto3.client("s3").put_object(Bucket=evaluate_env, Key="models/bad.tar.gz", Body=b"not a tar")
    with pytest.raises(evaluate_model.ModelArtifactError, match="cannot read"):
        evaluate_model.handler({"run_id": "run-3", "model_artifact": f"s3://{evaluate_env}/models/bad.tar.gz"},
                               lambda_context)


def test_metric_lookup_ignores_non_numbers():
    from lambdas.evaluate_model import metric

    assert metric({"a": {"b": 0.5}}, "a.b") == 0.5
    assert metric({"a": {"b": True}}, "a.b") is None
    assert metric({"a": "0.9"}, "a") is None
    assert metric({}, "a.b") is None


@pytest.fixture
def deploy_env(aws, monkeypatch):
    iam = boto3.client("iam")
    role = iam.create_role(RoleName="model-role", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    key = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    boto3.client("ssm").put_parameter(Name="/cxr/test/endpoint-name", Value="none", Type="String")
    env = {
        wiring.ENV_SAGEMAKER_ROLE_ARN: role,
        wiring.ENV_KMS_KEY_ARN: key,
        wiring.ENV_INFERENCE_IMAGE: "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0-cpu-py312",
        wiring.ENV_ENDPOINT_NAME: "cxr-test",
        wiring.ENV_ENDPOINT_MODE: "serverless",
        wiring.ENV_SERVERLESS_MEMORY_MB: "4096",
        wiring.ENV_SERVERLESS_MAX_CONCURRENCY: "3",
        wiring.ENV_ENDPOINT_INSTANCE_TYPE: "ml.g4dn.xlarge",
        wiring.ENV_ENDPOINT_PARAMETER: "/cxr/test/endpoint-name",
        wiring.ENV_RESOURCE_PREFIX: PREFIX,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def deploy(run: str, lambda_context) -> dict:
    from lambdas import deploy_model

    return deploy_model.handler(
        {"run_id": run, "model_name": f"{PREFIX}0-{run}", "model_artifact": f"s3://cxr-data/models/{run}/model.tar.gz",
         "artifact_sha256": DIGEST}, lambda_context,
    )


DIGEST = "ab" * 32
"""An Evaluate step's artifact digest."""


def test_first_deploy_creates_a_serverless_endpoint_then_the_parameter(deploy_env, lambda_context):
    from lambdas import aws, deploy_model

    sent = []
    aws.client("sagemaker").meta.events.register(
        "provide-client-params.sagemaker.CreateModel", lambda params, **_: sent.append(params))
    out = deploy("a", lambda_context)
    assert out["action"] == "created"
    assert sent[0]["EnableNetworkIsolation"] is False  # serverless refuses it (moto does not store it: the request)
    sm = boto3.client("sagemaker")
    config = sm.describe_endpoint_config(EndpointConfigName=f"{PREFIX}0-a")
    assert config["ProductionVariants"][0]["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 3}
    assert config["KmsKeyId"] == deploy_env[wiring.ENV_KMS_KEY_ARN]
    model = sm.describe_model(ModelName=f"{PREFIX}0-a")
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://cxr-data/models/a/model.tar.gz"
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    status = deploy_model.status_handler(out, lambda_context)
    assert status["ready"] is True
    assert boto3.client("ssm").get_parameter(Name="/cxr/test/endpoint-name")["Parameter"]["Value"] == "cxr-test"
    # a retried attempt changes nothing
    assert deploy("a", lambda_context)["action"] == "unchanged"


def test_next_deploy_updates_the_same_endpoint(deploy_env, lambda_context):
    from lambdas import aws

    deploy("a", lambda_context)
    updates = []

    def update_endpoint(params, **_):  # moto 5.2.5 has no UpdateEndpoint: answer it here, record the request
        updates.append(json.loads(params["body"]))
        return SimpleNamespace(status_code=200), {"EndpointArn": "arn"}

    aws.client("sagemaker").meta.events.register("before-call.sagemaker.UpdateEndpoint", update_endpoint)
    out = deploy("b", lambda_context)
    assert out["action"] == "updated"
    assert updates == [{"EndpointName": "cxr-test", "EndpointConfigName": f"{PREFIX}0-b"}]


def test_a_rolled_back_update_fails_the_deployment(deploy_env, lambda_context):
    from lambdas import deploy_model

    deploy("a", lambda_context)
    with pytest.raises(deploy_model.EndpointDeploymentFailed):
        deploy_model.status_handler({"endpoint_name": "cxr-test", "endpoint_config_name": f"{PREFIX}0-b"},
                                    lambda_context)


@pytest.mark.parametrize(
    ("mode", "instance", "kms"),
    [("realtime", "ml.g4dn.xlarge", False), ("realtime", "ml.g6.xlarge", False), ("realtime", "ml.m5.xlarge", True),
     ("async", "ml.c5.xlarge", True)],
)
def test_instance_endpoint_configs(mode, instance, kms):
    from lambdas.deploy_model import DeploySettings, endpoint_config_definition, model_definition

    settings = DeploySettings("role", "key", "image", "cxr-x", mode, 3072, 5, instance, "s3://b/async/")
    assert model_definition(settings, "m", "s3://b/model.tar.gz")["EnableNetworkIsolation"] is True
    config = endpoint_config_definition(settings, "c", "m")
    variant = config["ProductionVariants"][0]
    assert variant["InstanceType"] == instance and "ServerlessConfig" not in variant
    assert ("KmsKeyId" in config) is kms
    assert ("AsyncInferenceConfig" in config) is (mode == "async")


@pytest.fixture
def iam_stand_in():
    """moto evaluates no IAM: refuse, as AWS would, every SageMaker call the status role's grant does not cover.

    The grant (``infra/stacks/pipeline.py``, checked against the synthesized policy in
    tests/infra/test_stage_names.py): ListTags, DeleteEndpointConfig and DeleteModel on this stage's
    ``endpoint-config/<prefix>*`` and ``model/<prefix>*``; ListEndpointConfigs and DescribeEndpoint
    are not resource-scoped here. Records every call made on a named resource.
    """
    from lambdas import aws

    scoped = {"ListTags": ("ResourceArn", None), "DeleteEndpointConfig": ("EndpointConfigName", "endpoint-config"),
              "DeleteModel": ("ModelName", "model")}
    calls = []

    def check(model, params, **_):
        if model.name not in scoped:
            return None
        field, kind = scoped[model.name]
        value = json.loads(params["body"])[field]
        target = value if kind is None else f"arn:aws:sagemaker:us-east-1:123456789012:{kind}/{value}"
        calls.append((model.name, target))
        name = target.rsplit("/", 1)[1]
        if target.split(":")[5].split("/")[0] in ("endpoint-config", "model") and name.startswith(PREFIX):
            return None
        error = {"Code": "AccessDeniedException", "Message": f"not authorized to perform sagemaker:{model.name} "
                 f"on resource: {target}"}
        return SimpleNamespace(status_code=400), {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}

    aws.client("sagemaker").meta.events.register("before-call.sagemaker.*", check)
    yield calls
    aws.client("sagemaker").meta.events.unregister("before-call.sagemaker.*", check)


def test_a_served_deployment_retires_all_but_the_previous_one_of_its_endpoint(deploy_env, lambda_context,
                                                                               iam_stand_in):
    from lambdas import deploy_model

    sm = boto3.client("sagemaker")
    settings = deploy_model.DeploySettings.from_env(deploy_env)
    other_stage = wiring.resource_prefix("test-x")  # a stage whose name starts with this one's
    deployments = ((f"{PREFIX}0-a", "cxr-test"), (f"{other_stage}0-x", "cxr-test-x"), ("someone-elses-config", None),
                   (f"{PREFIX}0-b", "cxr-test"), ("cxr-0-before-stage-names", "cxr-test"),
                   (f"{PREFIX}0-c", "cxr-test"), (f"{PREFIX}0-d", "cxr-test"))  # oldest first
    for name, endpoint in deployments:
        tags = [{"Key": deploy_model.ENDPOINT_TAG, "Value": endpoint}] if endpoint else []
        sm.create_model(**deploy_model.model_definition(settings, name, "s3://cxr-data/m.tar.gz"), Tags=tags)
        sm.create_endpoint_config(**deploy_model.endpoint_config_definition(settings, name, name), Tags=tags)
    sm.create_endpoint(EndpointName="cxr-test", EndpointConfigName=f"{PREFIX}0-d")

    status = deploy_model.status_handler({"endpoint_name": "cxr-test", "endpoint_config_name": f"{PREFIX}0-d"},
                                         lambda_context)
    assert "retire_error" not in status  # no call outside the grant: a foreign configuration cannot stop it
    assert status["ready"] is True and status["retired"] == [f"{PREFIX}0-b", f"{PREFIX}0-a"]
    assert all(target.rsplit("/", 1)[1].startswith(PREFIX) for _, target in iam_stand_in)
    left = {c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]}
    assert left == {name for name, _ in deployments} - {f"{PREFIX}0-a", f"{PREFIX}0-b"}
    assert {m["ModelName"] for m in sm.list_models()["Models"]} == left
    again = deploy_model.status_handler({"endpoint_name": "cxr-test", "endpoint_config_name": f"{PREFIX}0-d"},
                                        lambda_context)
    assert again["retired"] == []  # a retried poll finds nothing more to do


def test_the_deploy_step_tags_what_it_creates_with_its_endpoint(deploy_env, lambda_context):
    from lambdas import deploy_model

    deploy("a", lambda_context)
    sm = boto3.client("sagemaker")
    arn = sm.describe_endpoint_config(EndpointConfigName=f"{PREFIX}0-a")["EndpointConfigArn"]
    assert {"Key": deploy_model.ENDPOINT_TAG, "Value": "cxr-test"} in sm.list_tags(ResourceArn=arn)["Tags"]


def test_the_deployed_model_carries_its_artifact_digest(deploy_env, lambda_context, monkeypatch):
    """In the container's environment (inference.py returns it with each answer) and as a tag on model and config."""
    from lambdas import deploy_model
    from lambdas.domain import audit

    monkeypatch.setenv(wiring.ENV_CODE_VERSION, "0.1.0+gabc")
    assert deploy("a", lambda_context)["artifact_sha256"] == DIGEST
    sm = boto3.client("sagemaker")
    model = sm.describe_model(ModelName=f"{PREFIX}0-a")
    assert model["PrimaryContainer"]["Environment"][audit.ARTIFACT_SHA256_VARIABLE] == DIGEST
    assert model["PrimaryContainer"]["Environment"][audit.CODE_VERSION_VARIABLE] == "0.1.0+gabc"
    for arn in (model["ModelArn"], sm.describe_endpoint_config(EndpointConfigName=f"{PREFIX}0-a")["EndpointConfigArn"]):
        assert {"Key": deploy_model.audit.ARTIFACT_TAG, "Value": DIGEST} in sm.list_tags(ResourceArn=arn)["Tags"]


def test_a_package_that_adopts_a_threshold_deploys_it_in_the_containers_environment(deploy_env, lambda_context):
    """``cxr models promote`` of an amendment: its own model name, the threshold beside the digest; none otherwise."""
    import os

    from lambdas import deploy_model
    from lambdas.domain import threshold_amendment

    deploy_model.handler({"run_id": "a-threshold-700", "model_name": f"{PREFIX}0-a-t700", "artifact_sha256": DIGEST,
                          "model_artifact": "s3://cxr-data/models/a/model.tar.gz", "threshold": "0.7"}, lambda_context)
    adopted = boto3.client("sagemaker").describe_model(ModelName=f"{PREFIX}0-a-t700")["PrimaryContainer"]["Environment"]
    own = deploy_model.model_definition(deploy_model.DeploySettings.from_env(os.environ), f"{PREFIX}0-a",
                                        "s3://cxr-data/models/a/model.tar.gz", artifact_sha256=DIGEST,
                                        code_version=os.environ.get(wiring.ENV_CODE_VERSION, ""))
    own = own["PrimaryContainer"]["Environment"]
    assert threshold_amendment.THRESHOLD_VARIABLE not in own
    assert adopted[threshold_amendment.THRESHOLD_VARIABLE] == "0.7"
    assert {k: v for k, v in adopted.items() if k != threshold_amendment.THRESHOLD_VARIABLE} == own
