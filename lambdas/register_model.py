"""RegisterModel Lambda (training pipeline): every trained model becomes a package in the stage's group.

After Evaluate: finds the serving champion (``lambdas.domain.promotion.champion_of``), decides the
approval status (the minimums, then the paired test on the benchmark set against the champion, or
the minimums alone and why), writes the decision and its statistics to ``reports/<run>/promotion.json``
and creates the model package with that status: the artifact as its inference container (the same
image and ``inference.py`` the endpoint and Batch Transform run), ``metrics.json`` as its model quality
statistics, and in ``CustomerMetadataProperties`` the run, dataset, artifact digest, code version,
training-data summary, report, benchmark set version and answers, and the lean serving copy's location and
digest (what ``endpoint_mode=lambda`` loads). The state machine deploys only an
``Approved`` package. A retried attempt finds the run's package and returns it unchanged.
"""

from __future__ import annotations

import json
import os
import uuid

from aws_lambda_powertools import Logger

from lambdas import aws, registry
from lambdas.domain import audit, layout, promotion

logger = Logger(service="cxr-register-model")

CONTENT_TYPES = ["image/png", "image/jpeg", "application/x-image", "application/octet-stream"]
"""What ``inference.py``'s ``input_fn`` takes (an encoded image); it answers JSON."""


def inference_specification(image: str, model_artifact: str, digest: str, code_version: str) -> dict:
    """The package's container, as ``lambdas.deploy_model.model_definition`` deploys it."""
    return {"Containers": [{"Image": image, "ModelDataUrl": model_artifact, "Environment": {
        "SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        audit.ARTIFACT_SHA256_VARIABLE: digest, audit.CODE_VERSION_VARIABLE: code_version or audit.UNKNOWN}}],
        "SupportedContentTypes": CONTENT_TYPES, "SupportedResponseMIMETypes": ["application/json"]}


def properties(event: dict, evaluation: dict, answers: dict | None, decision: dict, code_version: str) -> dict:
    values = {
        promotion.RUN_ID: event["run_id"], promotion.DATASET: event["dataset"],
        promotion.ARTIFACT_SHA256: evaluation["artifact_sha256"], promotion.CODE_VERSION: code_version,
        promotion.TRAINING_JOB: event["training_job_name"], promotion.DATA_SUMMARY: event["summary_uri"],
        promotion.REPORT: evaluation["report_uri"], promotion.DECISION: decision["decision"],
        promotion.BENCHMARK_VERSION: (answers or {}).get("version") or "none",
    }
    if answers and answers.get("records"):
        values[promotion.BENCHMARK_ANSWERS] = evaluation["benchmark_uri"]
    if evaluation.get("serving_artifact"):
        values[promotion.SERVING_ARTIFACT] = evaluation["serving_artifact"]
        values[promotion.SERVING_SHA256] = evaluation["serving_sha256"]
    if decision["approved"]:
        values[promotion.APPROVED_AT] = registry.now()
    values = {key: promotion.metadata_value(value) for key, value in values.items()}
    problems = promotion.metadata_problems(values)
    if problems:
        raise ValueError("CustomerMetadataProperties SageMaker would refuse: " + "; ".join(problems))
    return values


def existing(group: str, run_id: str) -> dict | None:
    """The package a previous attempt of this run created, if any."""
    for package in registry.packages(group):
        if package.get("CustomerMetadataProperties", {}).get(promotion.RUN_ID) == promotion.metadata_value(run_id):
            return package
    return None


def summary(package: dict, decision: dict, promotion_uri: str) -> dict:
    comparison = decision.get("comparison") or {}
    return {"model_package_arn": package["ModelPackageArn"], "version": package.get("ModelPackageVersion"),
            "status": decision["status"], "approved": decision["approved"], "decision": decision["decision"],
            "reason": decision["reason"], "champion": decision.get("champion") or "none",
            "statistics": {name: {k: m.get(k) for k in ("difference", "interval", "passed")}
                           for name, m in comparison.get("metrics", {}).items()},
            "promotion_uri": promotion_uri}


@logger.inject_lambda_context(log_event=False)
def handler(event: dict, context) -> dict:
    """Input ``{"run_id", "dataset", "training_job_name", "model_artifact", "summary_uri", "evaluation"}``."""
    group, bucket = os.environ["MODEL_PACKAGE_GROUP"], os.environ["DATA_BUCKET"]
    run_id, evaluation = str(event["run_id"]), event["evaluation"]
    promotion_key = layout.report_key(run_id, promotion.RECORD_FILE)
    promotion_uri = f"s3://{bucket}/{promotion_key}"
    found = existing(group, run_id)
    if found is not None:  # a retried attempt: the decision was made and stored
        return summary(found, registry.read_json(promotion_uri), promotion_uri)
    code_version = os.environ.get(audit.CODE_VERSION_VARIABLE, audit.UNKNOWN)
    champion = promotion.champion_of(registry.packages(group))
    champion_answers = registry.read_json(
        (champion or {}).get("CustomerMetadataProperties", {}).get(promotion.BENCHMARK_ANSWERS))
    answers = registry.read_json(evaluation.get("benchmark_uri"))
    decision = promotion.decide(evaluation, answers, champion, champion_answers,
                                mode=os.environ.get("APPROVAL_MODE", "auto"),
                                margin=float(os.environ.get("CHAMPION_MARGIN", "0.02")))
    aws.client("s3").put_object(Bucket=bucket, Key=promotion_key, ContentType="application/json",
                                Body=json.dumps({"run_id": run_id, **decision}, indent=1).encode())
    arn = aws.client("sagemaker").create_model_package(
        ModelPackageGroupName=group,
        ModelPackageDescription=f"run {run_id}: {decision['reason']}"[:promotion.MAX_DESCRIPTION],
        InferenceSpecification=inference_specification(os.environ["INFERENCE_IMAGE"], event["model_artifact"],
                                                       evaluation["artifact_sha256"], code_version),
        ModelMetrics={"ModelQuality": {"Statistics": {
            "ContentType": "application/json",
            "S3Uri": f"s3://{bucket}/{layout.report_key(run_id, 'metrics.json')}"}}},
        CustomerMetadataProperties=properties(event, evaluation, answers, decision, code_version),
        ModelApprovalStatus=decision["status"],
        ClientToken=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{group}/{run_id}")),  # AWS: one package per run
    )["ModelPackageArn"]
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=arn)
    logger.info("model registered", extra={"run_id": run_id, "package": arn, "status": decision["status"],
                                           "decision": decision["decision"]})
    return summary(package, decision, promotion_uri)
