"""``endpoint_mode=lambda``: no SageMaker endpoint; the predict function carries ONNX Runtime and reads the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra import asl, wiring

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


def test_the_state_machine_creates_no_endpoint_and_the_approval_is_the_deployment(lambda_mode):
    templates = [t for part, t in lambda_mode.items() if part != "outdir"]
    expression = asl.definition_expression(templates, wiring.STATE_MACHINE_ID)
    values = {r.name: f"<{r.name}>" for r in asl.references(templates, expression)}
    values.update({"AWS::Region": "us-east-1", "AWS::AccountId": "1", "AWS::Partition": "aws"})
    states = json.loads(asl.definition(templates, values, wiring.STATE_MACHINE_ID))["States"]
    for absent in (wiring.DEPLOY_STATE, wiring.ENDPOINT_STATUS_STATE, wiring.START_RESCORE_STATE):
        assert absent not in states
    assert states[wiring.GATE_STATE]["Choices"][0]["Next"] == wiring.NOTIFY_DEPLOYED_STATE
    message = states[wiring.NOTIFY_DEPLOYED_STATE]["Parameters"]["Message"]
    assert "endpoint_mode=lambda" in message["endpoint"] and "rescore.$" not in message


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
