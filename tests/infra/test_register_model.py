"""RegisterModel on moto: a package per run, approval by the minimums and the paired test against the champion."""

from __future__ import annotations

import json
from unittest import mock

import boto3
import numpy as np
import pytest
from test_pipeline_lambdas import METRICS, put_model

from cxr.local import hooks
from infra import wiring
from infra.config import DEFAULT_GATE
from lambdas.domain import promotion

GROUP = wiring.model_package_group("test")


@pytest.fixture
def registry_env(data_bucket, monkeypatch):
    for name, value in {wiring.ENV_DATA_BUCKET: data_bucket, wiring.ENV_QUALITY_GATE: json.dumps(DEFAULT_GATE),
                        wiring.ENV_MODEL_PACKAGE_GROUP: GROUP, wiring.ENV_APPROVAL_MODE: "auto",
                        wiring.ENV_CHAMPION_MARGIN: "0.02", wiring.ENV_INFERENCE_IMAGE: "image:latest",
                        wiring.ENV_CODE_VERSION: "0.1.0+gabc.dirty"}.items():
        monkeypatch.setenv(name, value)
    boto3.client("sagemaker").create_model_package_group(ModelPackageGroupName=GROUP)
    with mock.patch.object(hooks.sagemaker_models.SageMakerModelBackend, "update_model_package",
                           hooks.update_model_package):
        yield data_bucket


def answers(version: str | None, wrong_every: int = 0, n: int = 240) -> dict:
    """A model's benchmark answers: right on every image but every ``wrong_every``-th."""
    rng = np.random.default_rng(0)
    truth = rng.random(n) < 0.5
    records = []
    for i, t in enumerate(truth):
        wrong = wrong_every and i % wrong_every == 0
        called = bool(t) != bool(wrong)
        records.append({"content_hash": f"h{i}", "patient": f"p{i // 2}", "truth": bool(t),
                        "score": 0.8 if called else 0.2, "called": called})
    return {"version": version, "records": records if version else []}


def train_and_register(bucket, lambda_context, run_id, benchmark=None, metrics=METRICS):
    from lambdas import evaluate_model, register_model

    files = {"./metrics.json": json.dumps(metrics).encode()}
    if benchmark is not None:
        files["./benchmark.json"] = json.dumps(benchmark).encode()
    uri = put_model(bucket, files, key=f"models/{run_id}/job/output/model.tar.gz")
    evaluation = evaluate_model.handler({"run_id": run_id, "model_artifact": uri}, lambda_context)
    return register_model.handler({"run_id": run_id, "dataset": "kermany", "training_job_name": f"cxr-4test-0-{run_id}",
                                   "model_artifact": uri, "summary_uri": f"s3://{bucket}/manifests/{run_id}/summary.json",
                                   "evaluation": evaluation}, lambda_context)


def describe(arn: str) -> dict:
    return boto3.client("sagemaker").describe_model_package(ModelPackageName=arn)


def test_champion_challenger_on_the_same_benchmark_set(registry_env, lambda_context):
    bucket = registry_env
    first = train_and_register(bucket, lambda_context, "run-1", answers("b1", wrong_every=10))
    assert first["status"] == promotion.APPROVED and first["decision"] == "first-model" and first["version"] == 1
    worse = train_and_register(bucket, lambda_context, "run-2", answers("b1", wrong_every=3))
    assert worse["status"] == promotion.REJECTED and worse["decision"] == "worse-than-champion"
    assert worse["champion"] == first["model_package_arn"] and "champion v1" in worse["reason"]
    assert worse["statistics"]["accuracy"]["difference"] < -0.1 and not worse["statistics"]["accuracy"]["passed"]
    same = train_and_register(bucket, lambda_context, "run-3", answers("b1", wrong_every=10))
    assert same["status"] == promotion.APPROVED and same["decision"] == "not-worse"
    assert same["statistics"]["accuracy"] == {"difference": 0.0, "interval": [0.0, 0.0], "passed": True}
    stored = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key="reports/run-2/promotion.json")["Body"].read())
    assert stored["comparison"]["patients"] == 120 and stored["comparison"]["images"] == 240
    package = describe(same["model_package_arn"])
    meta = package["CustomerMetadataProperties"]
    assert meta[promotion.BENCHMARK_VERSION] == "b1" and meta[promotion.RUN_ID] == "run-3"
    assert meta[promotion.BENCHMARK_ANSWERS] == f"s3://{bucket}/reports/run-3/benchmark.json"
    assert meta[promotion.DATA_SUMMARY] == f"s3://{bucket}/manifests/run-3/summary.json"
    assert len(meta[promotion.ARTIFACT_SHA256]) == 64 and meta[promotion.CODE_VERSION] == "0.1.0+gabc.dirty"
    assert not promotion.metadata_problems(meta)
    container = package["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"].endswith("models/run-3/job/output/model.tar.gz")
    assert container["Environment"]["CXR_ARTIFACT_SHA256"] == meta[promotion.ARTIFACT_SHA256]
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == f"s3://{bucket}/reports/run-3/metrics.json"
    from lambdas import registry
    assert promotion.champion_of(registry.packages(GROUP))["ModelPackageArn"] == same["model_package_arn"]


def test_a_champion_from_before_the_benchmark_set_leaves_the_minimums_to_decide(registry_env, lambda_context):
    bucket = registry_env
    train_and_register(bucket, lambda_context, "old", benchmark=None)  # an archive from before benchmark.json
    worse = train_and_register(bucket, lambda_context, "new", answers("b1", wrong_every=2))
    assert worse["status"] == promotion.APPROVED and worse["decision"] == "minimums-only"
    assert "predates benchmark set b1" in worse["reason"] and worse["statistics"] == {}


def test_below_the_minimums_is_rejected_whatever_the_champion(registry_env, lambda_context):
    out = train_and_register(registry_env, lambda_context, "weak", answers("b1"),
                             metrics={**METRICS, "binary": {**METRICS["binary"], "sensitivity": 0.1}})
    assert out["status"] == promotion.REJECTED and out["reason"].startswith("below the minimums")


def test_manual_approval_leaves_the_package_pending(registry_env, lambda_context, monkeypatch):
    monkeypatch.setenv(wiring.ENV_APPROVAL_MODE, "manual")
    out = train_and_register(registry_env, lambda_context, "run-1", answers("b1"))
    assert out["status"] == promotion.PENDING and not out["approved"] and "cxr models promote" in out["reason"]
    assert promotion.APPROVED_AT not in describe(out["model_package_arn"])["CustomerMetadataProperties"]


def test_a_retried_attempt_returns_the_run_s_package(registry_env, lambda_context):
    first = train_and_register(registry_env, lambda_context, "run-1", answers("b1"))
    again = train_and_register(registry_env, lambda_context, "run-1", answers("b1"))
    assert again == first
    listed = boto3.client("sagemaker").list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]
    assert len(listed) == 1


def test_metadata_rules_follow_sagemaker():
    assert not promotion.metadata_problems({"cxr:report": "s3://b/reports/r 1/", "cxr:code": "0.1.0+gabc.dirty"})
    assert promotion.metadata_problems({"k": "{\"json\": 1}"}) and promotion.metadata_problems({"k": ""})
    assert promotion.metadata_problems({"k": "x" * 257})
    assert promotion.metadata_problems({f"k{i}": "v" for i in range(51)})
    assert not promotion.metadata_problems({"k": promotion.metadata_value("{\"json\": [1, 2]}")})


def test_the_offline_cloud_keeps_what_an_update_leaves_out(registry_env):
    """moto 5.2.5 clears the status and replaces the metadata on UpdateModelPackage; AWS does neither."""
    sagemaker = boto3.client("sagemaker")
    arn = sagemaker.create_model_package(ModelPackageGroupName=GROUP, ModelApprovalStatus=promotion.APPROVED,
                                         CustomerMetadataProperties={"a": "1"})["ModelPackageArn"]
    sagemaker.update_model_package(ModelPackageArn=arn, CustomerMetadataProperties={"b": "2"})
    package = describe(arn)
    assert package["ModelApprovalStatus"] == promotion.APPROVED
    assert package["CustomerMetadataProperties"] == {"a": "1", "b": "2"}
    with mock.patch.object(hooks.sagemaker_models.SageMakerModelBackend, "update_model_package",
                           hooks._moto_update_model_package):
        sagemaker.update_model_package(ModelPackageArn=arn, CustomerMetadataProperties={"c": "3"})
    moto_alone = describe(arn)
    assert "ModelApprovalStatus" not in moto_alone and moto_alone["CustomerMetadataProperties"] == {"c": "3"}
