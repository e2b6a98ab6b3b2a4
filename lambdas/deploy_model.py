"""Deploy Lambdas (training pipeline): put a gated model behind the stage's endpoint, then report when it serves.

``handler`` creates the SageMaker model and an endpoint configuration (serverless by default,
realtime or asynchronous instances as options) and creates or updates the endpoint;
``status_handler`` is polled by the state machine's wait loop and, once the endpoint serves the
new configuration, writes its name to the SSM parameter the predict Lambda reads and retires the
models and configurations of older deployments (the one served before is kept for a rollback). Both are
plain boto3 so the same state machine runs in moto's Step Functions engine, where only Lambda
tasks execute code. Every step is idempotent: Step Functions retries them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from lambdas import aws
from lambdas.domain import audit, layout, threshold_amendment

logger = Logger(service="cxr-deploy-model")

VARIANT = "AllTraffic"
ENDPOINT_TAG = "cxr:endpoint"
"""Tags each model and configuration with the endpoint it was made for: retirement touches no other stage's."""
KEEP_PREVIOUS = 1
"""Deployments kept besides the serving one, newest first: enough to roll back by hand."""
BUSY = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting", "UpdateRollbackFailed"})
_INSTANCE_STORAGE = re.compile(r"^ml\.(?:[a-z]+\d+[a-z]*d[a-z]*|g5|g6|g6e|p5|p5e|p5en)\.")
"""Families with local NVMe storage, where SageMaker refuses an endpoint KMS key (the disk is encrypted by hardware)."""


def has_instance_storage(instance_type: str) -> bool:
    """True for NVMe-backed instances: SageMaker refuses a volume KMS key there (hardware encrypts the disk)."""
    return bool(_INSTANCE_STORAGE.match(instance_type))


class EndpointBusy(RuntimeError):
    """The endpoint is changing: the state machine retries with backoff."""


class EndpointDeploymentFailed(RuntimeError):
    """SageMaker could not serve the new model; the previous configuration (if any) keeps serving."""


@dataclass(frozen=True)
class DeploySettings:
    role_arn: str
    kms_key_arn: str
    image: str
    endpoint_name: str
    mode: str
    serverless_memory_mb: int
    serverless_max_concurrency: int
    instance_type: str
    async_output_uri: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DeploySettings:
        mode = env.get("ENDPOINT_MODE", "serverless")
        if mode not in ("serverless", "realtime", "async"):
            raise ValueError(f"ENDPOINT_MODE must be serverless, realtime or async, not {mode!r}")
        settings = cls(
            role_arn=env["SAGEMAKER_ROLE_ARN"],
            kms_key_arn=env["KMS_KEY_ARN"],
            image=env["INFERENCE_IMAGE"],
            endpoint_name=env["ENDPOINT_NAME"],
            mode=mode,
            serverless_memory_mb=int(env.get("SERVERLESS_MEMORY_MB", "3072")),
            serverless_max_concurrency=int(env.get("SERVERLESS_MAX_CONCURRENCY", "5")),
            instance_type=env.get("ENDPOINT_INSTANCE_TYPE", "ml.c6i.large"),  # CPU: the model runs on the CPU only
            async_output_uri=env.get("ASYNC_OUTPUT_URI") or None,
        )
        if mode == "async" and not settings.async_output_uri:
            raise ValueError("ENDPOINT_MODE=async needs ASYNC_OUTPUT_URI")
        return settings


def model_definition(settings: DeploySettings, name: str, model_data_url: str, *, artifact_sha256: str | None = None,
                     code_version: str = "", threshold: str | None = None) -> dict:
    """The model as the SageMaker PyTorch serving container loads it: ``code/inference.py`` inside the archive.

    The archive's SHA-256 (taken by the Evaluate step) and the deploying code's version go into the
    container's environment: ``inference.py`` returns the digest with every answer, so each prediction
    names the exact artifact behind it. A package that adopts a site's threshold
    (``lambdas.domain.threshold_amendment``) adds it there too, and ``inference.py`` puts it in force.

    Instance endpoints run it network-isolated; serverless endpoints refuse network isolation (a
    documented limit of Serverless Inference), and the model needs no network there either: its
    dependencies are vendored in ``code/``.
    """
    return {
        "ModelName": name,
        "ExecutionRoleArn": settings.role_arn,
        "PrimaryContainer": {
            "Image": settings.image,
            "ModelDataUrl": model_data_url,
            "Environment": {
                "SAGEMAKER_PROGRAM": "inference.py",
                "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
                "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
                **({audit.ARTIFACT_SHA256_VARIABLE: artifact_sha256} if artifact_sha256 else {}),
                audit.CODE_VERSION_VARIABLE: code_version or audit.UNKNOWN,
                **({threshold_amendment.THRESHOLD_VARIABLE: threshold} if threshold else {}),
            },
        },
        "EnableNetworkIsolation": settings.mode != "serverless",
    }


def endpoint_config_definition(settings: DeploySettings, name: str, model_name: str) -> dict:
    variant: dict = {"VariantName": VARIANT, "ModelName": model_name}
    config: dict = {"EndpointConfigName": name, "ProductionVariants": [variant]}
    if settings.mode == "serverless":
        variant["ServerlessConfig"] = {
            "MemorySizeInMB": settings.serverless_memory_mb,
            "MaxConcurrency": settings.serverless_max_concurrency,
        }
    else:
        variant.update(InstanceType=settings.instance_type, InitialInstanceCount=1)
    if settings.mode == "serverless" or not has_instance_storage(settings.instance_type):
        config["KmsKeyId"] = settings.kms_key_arn
    if settings.mode == "async":
        config["AsyncInferenceConfig"] = {"OutputConfig": {
            "S3OutputPath": settings.async_output_uri,
            "S3FailurePath": async_failure_uri(settings.async_output_uri),
            "KmsKeyId": settings.kms_key_arn,
        }}
    return config


def async_failure_uri(output_uri: str) -> str:
    """The output path's ``failures/`` folder (``layout.ASYNC_FAILURES``): where the completion sees failures too."""
    return f"{output_uri.rstrip('/')}/{layout.ASYNC_FAILURES.removeprefix(layout.ASYNC_OUTPUT)}"


def _create(call, **kwargs) -> None:
    """Create a named resource, treating "already exists" as done (a retried attempt)."""
    try:
        call(**kwargs)
    except ClientError as exc:
        message = exc.response.get("Error", {}).get("Message", "")
        if aws.error_code(exc) == "ValidationException" and "already exist" in message:
            return
        raise


def describe_endpoint(name: str) -> dict | None:
    try:
        return aws.client("sagemaker").describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if aws.error_code(exc) == "ValidationException" and "Could not find endpoint" in str(exc):
            return None
        raise


@logger.inject_lambda_context(log_event=False)
def handler(event: dict, context) -> dict:
    """Input ``{"run_id", "model_name", "model_artifact", "artifact_sha256"}`` (model name: the training job's, unique
    per run; the digest: the Evaluate step's), and ``"threshold"`` from a package that adopts a site's."""
    settings = DeploySettings.from_env(os.environ)
    name, digest = str(event["model_name"]), str(event["artifact_sha256"])
    sagemaker = aws.client("sagemaker")
    tags = [{"Key": "run_id", "Value": str(event["run_id"])}, {"Key": ENDPOINT_TAG, "Value": settings.endpoint_name},
            {"Key": audit.ARTIFACT_TAG, "Value": digest}]
    model = model_definition(settings, name, event["model_artifact"], artifact_sha256=digest,
                             code_version=os.environ.get(audit.CODE_VERSION_VARIABLE, ""),
                             threshold=event.get("threshold") or None)
    _create(sagemaker.create_model, **model, Tags=tags)
    _create(sagemaker.create_endpoint_config, **endpoint_config_definition(settings, name, name), Tags=tags)
    endpoint = describe_endpoint(settings.endpoint_name)
    if endpoint is None:
        sagemaker.create_endpoint(EndpointName=settings.endpoint_name, EndpointConfigName=name, Tags=tags)
        action = "created"
    elif endpoint["EndpointConfigName"] == name:
        action = "unchanged"  # a retried attempt after the create or update went through
    elif endpoint["EndpointStatus"] == "Failed":
        # A failed endpoint cannot be updated; delete it and let the retry create it afresh.
        sagemaker.delete_endpoint(EndpointName=settings.endpoint_name)
        raise EndpointBusy(f"deleting failed endpoint {settings.endpoint_name}")
    elif endpoint["EndpointStatus"] in BUSY:
        raise EndpointBusy(f"endpoint {settings.endpoint_name} is {endpoint['EndpointStatus']}")
    else:
        sagemaker.update_endpoint(EndpointName=settings.endpoint_name, EndpointConfigName=name)
        action = "updated"
    logger.info("deploying", extra={"endpoint": settings.endpoint_name, "config": name, "action": action,
                                    "mode": settings.mode})
    return {"endpoint_name": settings.endpoint_name, "endpoint_config_name": name, "model_name": name,
            "mode": settings.mode, "action": action, "artifact_sha256": digest}


@logger.inject_lambda_context(log_event=False)
def status_handler(event: dict, context) -> dict:
    """Input: the deploy step's output. ``ready`` once the endpoint serves that configuration."""
    endpoint_name, config_name = event["endpoint_name"], event["endpoint_config_name"]
    endpoint = describe_endpoint(endpoint_name)
    if endpoint is None:
        raise EndpointDeploymentFailed(f"endpoint {endpoint_name} does not exist")
    status = endpoint["EndpointStatus"]
    if status == "Failed":
        raise EndpointDeploymentFailed(endpoint.get("FailureReason", "endpoint failed"))
    if status == "InService" and endpoint["EndpointConfigName"] != config_name:
        # SageMaker rolled a failed update back: the previous model keeps serving.
        raise EndpointDeploymentFailed(
            endpoint.get("FailureReason") or f"endpoint still serves {endpoint['EndpointConfigName']}")
    ready = status == "InService"
    if not ready:
        return {**event, "status": status, "ready": False}
    aws.client("ssm").put_parameter(Name=os.environ["ENDPOINT_PARAMETER"], Value=endpoint_name,
                                    Type="String", Overwrite=True)
    try:
        retired = retire_old_deployments(endpoint_name, config_name, KEEP_PREVIOUS, os.environ["RESOURCE_PREFIX"])
    except ClientError as exc:  # housekeeping: the new model serves either way, so report instead of failing
        logger.warning("could not retire old deployments", extra={"error": str(exc)})
        return {**event, "status": status, "ready": True, "retired": [], "retire_error": str(exc)}
    return {**event, "status": status, "ready": True, "retired": retired}


def retire_old_deployments(endpoint_name: str, serving: str, keep: int, prefix: str) -> list[str]:
    """Delete the models and configurations made for this endpoint, except the one serving and the
    ``keep`` newest before it (a rollback is one ``update_endpoint`` away). Names deleted, oldest last.

    Only configurations named with this stage's ``prefix`` are looked at (``NameContains`` narrows the
    listing, then the exact prefix): the role may read tags and delete only those, and a configuration of
    another stage or application must never stop or widen the clean-up.
    """
    sagemaker = aws.client("sagemaker")
    ours = []
    pages = sagemaker.get_paginator("list_endpoint_configs").paginate(
        NameContains=prefix, SortBy="CreationTime", SortOrder="Descending")
    for page in pages:
        for config in page["EndpointConfigs"]:
            name = config["EndpointConfigName"]
            if name == serving or not name.startswith(prefix):
                continue
            tags = sagemaker.list_tags(ResourceArn=config["EndpointConfigArn"])["Tags"]
            if {"Key": ENDPOINT_TAG, "Value": endpoint_name} in tags:
                ours.append(name)
    retired = ours[keep:]
    for name in retired:  # each model is named after its configuration (handler)
        _delete(sagemaker.delete_endpoint_config, EndpointConfigName=name)
        _delete(sagemaker.delete_model, ModelName=name)
    if retired:
        logger.info("retired old deployments", extra={"endpoint": endpoint_name, "retired": retired})
    return retired


def _delete(call, **kwargs) -> None:
    """Delete a named resource, treating "not found" as done (a retried attempt)."""
    try:
        call(**kwargs)
    except ClientError as exc:
        if aws.error_code(exc) == "ValidationException" and "not find" in str(exc).lower():
            return
        raise
