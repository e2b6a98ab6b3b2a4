"""`cxr audit` on the offline cloud: one X-ray traced from its upload to the artifact digest and the gate.

A tiny model goes through the pipeline's last steps (Evaluate takes the digest, Deploy stamps it on the
model); the X-ray is predicted through ``incoming/`` with Object Lock retention on, and uploaded to the
training data too; the audit by key and by content hash must find all of it and agree with the archive.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from local.test_async_endpoint import deploy, model_archive  # noqa: F401 (fixture)

from cxr import operations, source_names, target
from cxr.commands import audit
from cxr.local import cloud as local_cloud
from infra import wiring
from infra.config import Config
from lambdas.domain import imaging

pytestmark = pytest.mark.slow
STAGE = "audit"
XRAY = min(Path("samples/kermany-val16").rglob("*.jpeg"))


@pytest.fixture(scope="module")
def traced(module_dir, model_archive):  # noqa: F811
    config = Config.demo(stage=STAGE, prediction_retention_days=30)
    with local_cloud.start(config, module_dir("local")) as running:
        evaluation = deploy(running, model_archive, STAGE)
        s3 = boto3.client("s3")
        inference = running.names.bucket(wiring.INFERENCE)
        name_of = source_names.namer(boto3.client("secretsmanager"), STAGE, inference)
        [result] = operations.predict_files(s3, inference, [XRAY], name_of).values()
        s3.put_object(Bucket=running.names.bucket(wiring.DATA), Key=f"raw/wards/NORMAL/{XRAY.name}",
                      Body=XRAY.read_bytes())
        deployment = target.Target(session=boto3.Session(), stage=STAGE, account=local_cloud.ACCOUNT,
                                   region=local_cloud.REGION)
        names = running.names
        trail = audit.Trail(deployment, names.table(wiring.PREDICTIONS_TABLE), names.table(wiring.SOURCE_STATE_TABLE))
        yield SimpleNamespace(cloud=running, evaluation=evaluation, result=result, trail=trail, deployment=deployment,
                              key=f"incoming/0000/{XRAY.name}")  # where predict_files uploaded it


def test_an_audit_by_key_traces_the_prediction_to_the_artifact_and_its_gate(traced):
    archive = boto3.client("s3").get_object(Bucket=traced.cloud.names.bucket(wiring.DATA),
                                            Key=traced.evaluation["model_artifact"].split("/", 3)[3])["Body"].read()
    digest = hashlib.sha256(archive).hexdigest()
    assert traced.evaluation["artifact_sha256"] == digest
    assert traced.result["audit"]["artifact_sha256"] == digest  # the endpoint's own answer, through the record

    trail = traced.trail.collect(traced.key)
    [upload] = trail["uploads"]
    assert (upload["key"], upload["name"]) == (traced.key, traced.result["source"]["name"])
    assert [v["version_id"] for v in upload["versions"]] == [traced.result["source"]["version_id"]]
    assert upload["outcome"]["outcome"] == "predicted"
    [prediction] = trail["predictions"]
    content_hash = imaging.normalise(XRAY.read_bytes()).content_hash
    assert prediction["audit"]["content_hash"] == content_hash
    assert prediction["audit"]["artifact_sha256"] == digest and prediction["audit"]["code_version"]
    [json_version] = prediction["json"]["versions"]
    assert json_version["lock"] == "GOVERNANCE" and json_version["latest"]
    [model] = trail["models"]
    assert model["sagemaker_model"]["artifact_sha256"] == digest
    assert model["run"]["run_id"] == "run-1" and model["run"]["digest_matches"]
    assert model["run"]["passed"] == traced.evaluation["passed"]
    [training] = trail["training_data"]  # the same pixels were uploaded to the training data
    data = traced.cloud.names.bucket(wiring.DATA)
    data_name = source_names.namer(boto3.client("secretsmanager"), STAGE, data)(f"raw/wards/NORMAL/{XRAY.name}")
    assert training["name"] == data_name and training["processed_key"].startswith("processed/")


def test_an_audit_by_content_hash_finds_the_same_trail(traced):
    content_hash = imaging.normalise(XRAY.read_bytes()).content_hash
    trail = traced.trail.collect(content_hash)
    [upload] = trail["uploads"]  # by name: the key was not given, so it is not shown (its pointer lists versions)
    assert upload["name"] == traced.result["source"]["name"] and "key" not in upload
    assert [v["version_id"] for v in upload["versions"]] == [traced.result["source"]["version_id"]]
    assert [p["version_id"] for p in trail["predictions"]] == [traced.result["source"]["version_id"]]
    assert trail["models"][0]["run"]["run_id"] == "run-1"


def test_a_retired_model_is_traced_to_its_run_by_the_digest_in_the_gate_report(traced):
    boto3.client("sagemaker").delete_model(ModelName=f"{wiring.resource_prefix(STAGE)}0-tiny")
    trail = traced.trail.collect(traced.key)
    [model] = trail["models"]
    assert model["sagemaker_model"] is None
    assert model["run"]["run_id"] == "run-1" and model["run"]["digest_matches"]


def test_the_command_prints_the_trail_and_fails_on_an_unknown_subject(traced, monkeypatch, capsys):
    monkeypatch.setattr(audit.target, "resolve", lambda args: traced.deployment)
    monkeypatch.setattr(audit.Trail, "of", classmethod(lambda cls, deployment: traced.trail))
    args = SimpleNamespace(subject=traced.key, json=False)
    assert audit.run(args) == 0
    out = capsys.readouterr().out
    assert traced.evaluation["artifact_sha256"] in out and "training run run-1" in out and "GOVERNANCE" in out
    assert audit.run(SimpleNamespace(subject="incoming/never-uploaded.png", json=True)) == 1
    assert json.loads(capsys.readouterr().out)["predictions"] == []
