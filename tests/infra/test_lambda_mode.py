"""``endpoint_mode=lambda``: no SageMaker endpoint; the predict function carries ONNX Runtime and reads the registry."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import test_asl_checks

from infra import wiring

pytestmark = pytest.mark.slow

LAMBDA_UNZIPPED_LIMIT = 250 * 2**20
""""Deployment package (.zip file archive) size: 250 MB (unzipped), ... includes all layers" (Lambda quotas)."""


@pytest.fixture(scope="module")
def lambda_mode(module_dir, synth):
    """A synthesis in lambda mode, cdk-nag on (after the session's, reusing its caches)."""
    from infra.app import build, make_app

    outdir = module_dir("lambda-mode.out")
    context = json.loads((Path(__file__).resolve().parents[2] / "cdk.json").read_text())["context"]
    app = make_app(outdir=str(outdir), context={**context, "cxr": {**context["cxr"], "endpoint_mode": "lambda"}})
    stacks = build(app)
    assembly = app.synth()  # cdk-nag raises here on any unacknowledged finding
    templates = {part: assembly.get_stack_by_name(stack.stack_name).template for part, stack in stacks.items()}
    return {**templates, "outdir": outdir}


def predict_function(template: dict) -> dict:
    (function,) = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"
                   and r["Properties"].get("Handler") == wiring.PREDICT.handler]
    return function


def lambda_mode_definition(lambda_mode) -> dict:
    """The lambda-mode ASL with ARNs shaped as AWS's (``asl-validator`` checks them)."""
    return test_asl_checks.deployed_definition(
        types.SimpleNamespace(templates={p: t for p, t in lambda_mode.items() if p != "outdir"}))


def test_the_state_machine_creates_no_endpoint_and_the_approval_is_the_deployment(lambda_mode):
    states = lambda_mode_definition(lambda_mode)["States"]
    for absent in (wiring.DEPLOY_STATE, wiring.ENDPOINT_STATUS_STATE, wiring.WAIT_FOR_RESCORE_STATE):
        assert absent not in states
    assert states[wiring.GATE_STATE]["Choices"][0]["Next"] == wiring.START_RESCORE_STATE
    message = states[wiring.NOTIFY_DEPLOYED_STATE]["Parameters"]["Message"]
    assert "endpoint_mode=lambda" in message["endpoint"] and message["rescore.$"] == "$.rescore"


def test_the_rescore_runs_the_approved_package_in_batches_then_reports(lambda_mode, tmp_path):
    """No SageMaker model, so no transform job: StartRescore -> ScoreRecent (RescoreBatch per batch) ->
    RescoreStatus, each failure reported with the deployment; the definition passes asl-validator."""
    definition = lambda_mode_definition(lambda_mode)
    states = definition["States"]
    start = states[wiring.START_RESCORE_STATE]
    assert start["Parameters"]["model_package_arn.$"] == "$.registration.model_package_arn"
    assert states[wiring.RESCORE_STARTED_STATE]["Choices"][0]["Next"] == wiring.SCORE_RECENT_STATE
    assert states[wiring.RESCORE_STARTED_STATE]["Default"] == wiring.NOTIFY_DEPLOYED_STATE
    recent = states[wiring.SCORE_RECENT_STATE]
    assert recent["Type"] == "Map" and recent["ItemsPath"] == "$.rescore.batches" and recent["ResultPath"] is None
    assert recent["MaxConcurrency"] == 10 and recent["Next"] == wiring.RESCORE_STATUS_STATE
    assert recent["ItemSelector"] == {"package.$": "$.rescore.package", "input.$": "$.rescore.input",
                                      "start_after.$": "$$.Map.Item.Value.start_after",
                                      "last.$": "$$.Map.Item.Value.last"}
    score = recent["ItemProcessor"]["States"][wiring.SCORE_BATCH_STATE]
    assert wiring.RESCORE_BATCH.id in score["Resource"] and score["End"] is True
    assert states[wiring.RESCORE_STATUS_STATE]["Parameters"]["scorer.$"] == "$.rescore.scorer"
    assert states[wiring.RESCORE_STATUS_STATE]["Next"] == wiring.NOTIFY_DEPLOYED_STATE
    for name in (wiring.START_RESCORE_STATE, wiring.SCORE_RECENT_STATE, wiring.RESCORE_STATUS_STATE):
        assert [(c["Next"], c["ResultPath"]) for c in states[name]["Catch"]] == [
            (wiring.NOTIFY_DEPLOYED_STATE, "$.rescore")], name
    result = test_asl_checks.asl_validator(definition, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rescore_batch_function_reads_one_package_and_no_transform_job_is_allowed(lambda_mode):
    pipeline = lambda_mode["pipeline"]
    (function,) = [r["Properties"] for r in pipeline["Resources"].values() if r["Type"] == "AWS::Lambda::Function"
                   and r["Properties"].get("Handler") == wiring.RESCORE_BATCH.handler]
    assert len(function["Layers"]) == 1 and function["MemorySize"] == wiring.RESCORE_BATCH.memory_mb
    policies = [r for r in pipeline["Resources"].values() if r["Type"] == "AWS::IAM::Policy"]
    batch = json.dumps([p for p in policies if wiring.RESCORE_BATCH.id in json.dumps(p["Properties"]["Roles"])])
    assert "sagemaker:DescribeModelPackage" in batch and "sagemaker:ListModelPackages" not in batch
    assert "batch-output/*" in batch and "serving/*" in batch
    assert "sagemaker:CreateTransformJob" not in json.dumps(policies)
    handlers = {r["Properties"].get("Handler") for t in (lambda_mode[p] for p in lambda_mode if p != "outdir")
                for r in t["Resources"].values() if r["Type"] == "AWS::Lambda::Function"}
    assert {f.handler for f in wiring.deployed_functions("lambda")} <= handlers


def test_the_predict_function_has_the_runtime_layer_and_reads_the_registry_instead_of_an_endpoint(lambda_mode):
    function = predict_function(lambda_mode["inference"])
    assert len(function["Layers"]) == 1
    variables = function["Environment"]["Variables"]
    assert variables[wiring.ENV_ENDPOINT_MODE] == "lambda"
    assert variables[wiring.ENV_MODEL_PACKAGE_GROUP] == wiring.model_package_group("dev")
    policies = json.dumps([r for r in lambda_mode["inference"]["Resources"].values() if r["Type"] == "AWS::IAM::Policy"
                           and "Predict" in json.dumps(r["Properties"]["Roles"])])
    assert "sagemaker:InvokeEndpoint" not in policies
    assert "sagemaker:DescribeModelPackage" in policies and "sagemaker:ListModelPackages" in policies


def test_bundle_and_layer_fit_lambdas_250_mb_unzipped(lambda_mode, capsys):
    """The function bundle (every function's) plus the ONNX Runtime layer, as Lambda counts them: unzipped."""
    function = predict_function(lambda_mode["inference"])
    layer = next(r["Properties"] for r in lambda_mode["inference"]["Resources"].values()
                 if r["Type"] == "AWS::Lambda::LayerVersion")
    outdir = lambda_mode["outdir"]
    sizes = {}
    for name, code in (("bundle", function["Code"]), ("layer", layer["Content"])):
        folder = outdir / f"asset.{code['S3Key'].removesuffix('.zip')}"
        sizes[name] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    with capsys.disabled():
        print(f"\n  predict function, lambda mode: bundle {sizes['bundle'] / 1e6:.1f} MB + layer "
              f"{sizes['layer'] / 1e6:.1f} MB = {sum(sizes.values()) / 1e6:.1f} MB unzipped", end="")
    assert sum(sizes.values()) < LAMBDA_UNZIPPED_LIMIT - 20 * 2**20  # a margin for the next dependency
    layer_dir = outdir / f"asset.{layer['Content']['S3Key'].removesuffix('.zip')}"
    native = [p.name for p in (layer_dir / "python" / "onnxruntime" / "capi").glob("*.so")]
    assert any("cpython-314-x86_64" in name for name in native)  # the runtime's Python and CPU
