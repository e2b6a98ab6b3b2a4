"""`cxr teardown --local` as separate processes against the long-lived offline cloud (`cxr local up`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from infra import wiring

pytestmark = pytest.mark.slow
CXR = [sys.executable, "-m", "cxr.cli"]
ROOT = Path(__file__).resolve().parents[2]


def cxr(env, *args):
    return subprocess.run([*CXR, *args], env=env, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)


@pytest.fixture(scope="module")
def server(module_dir):
    directory = module_dir("cxr-local")
    env = {**os.environ, "CXR_LOCAL_DIR": str(directory), "AWS_EC2_METADATA_DISABLED": "true"}
    up = cxr(env, "local", "up")
    assert up.returncode == 0, up.stdout + up.stderr
    yield env, json.loads((directory / "server.json").read_text())
    cxr(env, "local", "down")


def test_teardown_of_the_offline_cloud_removes_the_pipeline_s_resources(server):
    env, state = server
    stage = state["stage"]
    session = boto3.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1")
    sagemaker = session.client("sagemaker", endpoint_url=state["url"])
    data = wiring.BUCKETS[wiring.DATA].name(stage, "123456789012", "us-east-1")
    name = "cxr-0-00000000-1111-2222-3333-444444444444"
    sagemaker.create_model(ModelName=name, ExecutionRoleArn=f"arn:aws:iam::123456789012:role/cxr-{stage}-sagemaker",
                           PrimaryContainer={"Image": "local/cxr-inference:latest",
                                             "ModelDataUrl": f"s3://{data}/models/run/{name}/output/model.tar.gz"})
    sagemaker.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name, "ServerlessConfig": {"MemorySizeInMB": 3072,
                                                                             "MaxConcurrency": 5}}])
    sagemaker.create_endpoint(EndpointName=wiring.endpoint_name(stage), EndpointConfigName=name)

    dry = cxr(env, "teardown", "--local", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"endpoint {wiring.endpoint_name(stage)}" in dry.stdout and f"model {name}" in dry.stdout
    assert sagemaker.list_models()["Models"]  # a dry run changes nothing

    down = cxr(env, "teardown", "--local", "--wait", "30")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "Left: nothing billable" in down.stdout and "Kept (retained data" in down.stdout
    assert sagemaker.list_endpoints()["Endpoints"] == [] and sagemaker.list_models()["Models"] == []

    data_too = cxr(env, "teardown", "--local", "--delete-data")
    assert data_too.returncode == 0 and "emptied and deleted" in data_too.stdout
    left = {b["Name"] for b in session.client("s3", endpoint_url=state["url"]).list_buckets()["Buckets"]}
    assert not left & {wiring.BUCKETS[role].name(stage, "123456789012", "us-east-1") for role in wiring.BUCKETS}
