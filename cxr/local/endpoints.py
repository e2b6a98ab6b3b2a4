"""Local SageMaker endpoints: the real ``code/inference.py`` of the deployed model artifact serves each request.

An endpoint resolves as SageMaker resolves it: endpoint -> endpoint config -> model ->
``ModelDataUrl``; the ``model.tar.gz`` is fetched from (local) S3, unpacked once, and its own
handler functions are loaded from ``code/`` in the order the PyTorch inference toolkit calls them.

An endpoint configuration with ``AsyncInferenceConfig`` makes an asynchronous endpoint, as on AWS:
it refuses ``InvokeEndpoint`` with ``ValidationError`` and serves ``InvokeEndpointAsync``, reading the
input from S3 and writing the answer (or the failure) where the configuration and request say, on a
worker thread, after or before the call returns ("The processing of the inference request may or may
not complete before you receive a response", InvokeEndpointAsync's API reference).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3

from cxr.local.functions import environment_applied
from cxr.local.iam_trace import acting_as
from lambdas.domain.layout import split_s3_uri


@dataclass(frozen=True)
class AsyncRequest:
    """What InvokeEndpointAsync's headers carry."""

    endpoint_name: str
    input_location: str
    content_type: str
    accept: str
    inference_id: str
    filename: str | None = None
    """The result's object name (default ``<inference id>.out``)."""
    path_extension: str | None = None
    """Appended to the configuration's output path."""


class EndpointError(Exception):
    """What the endpoint container answers with an HTTP error: ``code`` is the SageMaker error name."""

    def __init__(self, code: str, message: str, status: int):
        super().__init__(message)
        self.code, self.status = code, status


@dataclass
class LoadedModel:
    handler: ModuleType
    model: Any
    model_dir: Path


class LocalEndpoints:
    def __init__(self, workdir: Path):
        self.workdir = workdir / "endpoints"
        self._models: dict[tuple, LoadedModel] = {}
        self._lock = threading.Lock()

    def invoke(self, endpoint_name: str, body: bytes, content_type: str, accept: str) -> tuple[bytes, str]:
        config = self._config(endpoint_name)
        if config.get("AsyncInferenceConfig"):
            raise EndpointError("ValidationError", f"Endpoint {endpoint_name} is an asynchronous endpoint: it takes "
                                "InvokeEndpointAsync with the input in S3, not InvokeEndpoint.", 400)
        return self._serve(self._model(config), body, content_type, accept)

    def invoke_async(self, request: AsyncRequest) -> tuple[str, str]:
        """Queue ``request``; returns where its result and its failure will be written."""
        config = self._config(request.endpoint_name)
        if not config.get("AsyncInferenceConfig"):
            raise EndpointError("ValidationError", f"Endpoint {request.endpoint_name} is not an asynchronous "
                                "endpoint: it takes InvokeEndpoint.", 400)
        try:
            split_s3_uri(request.input_location)
        except ValueError:
            raise EndpointError("ValidationError", f"InputLocation {request.input_location!r} is not an S3 URI",
                                400) from None
        output = config["AsyncInferenceConfig"]["OutputConfig"]
        output_uri = _location(output["S3OutputPath"], request.path_extension,
                               request.filename or f"{request.inference_id}.out")
        failure_uri = _location(output.get("S3FailurePath") or output["S3OutputPath"], request.path_extension,
                                f"{request.inference_id}-error.out")
        worker = threading.Thread(target=self._complete, args=(config, request, output_uri, failure_uri,
                                                               output.get("KmsKeyId")),
                                  name=f"async-inference-{request.inference_id}", daemon=True)
        worker.start()
        return output_uri, failure_uri

    def _complete(self, config: dict, request: AsyncRequest, output_uri: str, failure_uri: str,
                  kms_key_id: str | None) -> None:
        """Run one queued request and write its answer, or why it failed, as the asynchronous endpoint does."""
        s3 = boto3.client("s3")
        model = self._model(config)
        with acting_as(model["ExecutionRoleArn"]):  # the container reads the input and writes the result as its role
            try:
                bucket, key = split_s3_uri(request.input_location)
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                payload, _ = self._serve(model, body, request.content_type, request.accept)
                target = output_uri
            except Exception as exc:  # any failure becomes the failure object, as SageMaker writes it
                payload, target = f"{type(exc).__name__}: {exc}".encode(), failure_uri
            bucket, key = split_s3_uri(target)
            encryption = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id} if kms_key_id else {}
            s3.put_object(Bucket=bucket, Key=key, Body=payload, **encryption)

    def _config(self, endpoint_name: str) -> dict:
        """The configuration an endpoint that can take requests serves."""
        sagemaker = boto3.client("sagemaker")
        try:
            endpoint = sagemaker.describe_endpoint(EndpointName=endpoint_name)
        except sagemaker.exceptions.ClientError:
            raise EndpointError("ValidationError", f"Endpoint {endpoint_name} not found.", 400) from None
        if endpoint["EndpointStatus"] not in ("InService", "Updating"):
            raise EndpointError("ValidationError", f"Endpoint {endpoint_name} is {endpoint['EndpointStatus']}", 400)
        return sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])

    @staticmethod
    def _model(config: dict) -> dict:
        """The model the configuration's (one) variant serves, as DescribeModel gives it."""
        return boto3.client("sagemaker").describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])

    def serve_model(self, model: dict, body: bytes, content_type: str, accept: str,
                    environment: dict[str, str]) -> tuple[bytes, str]:
        """One request to a model outside an endpoint (a Batch Transform job's container, whose ``Environment``
        adds to the model's): the handler runs in that environment."""
        return self._serve(model, body, content_type, accept, environment)

    def _serve(self, model: dict, body: bytes, content_type: str, accept: str,
               extra_environment: dict[str, str] | None = None) -> tuple[bytes, str]:
        environment = {**model["PrimaryContainer"].get("Environment", {}), **(extra_environment or {})}
        with acting_as(model["ExecutionRoleArn"]):  # the container fetches its artifact as the model's role
            loaded = self._load(model["PrimaryContainer"]["ModelDataUrl"], environment)
        handler = loaded.handler
        try:
            with environment_applied(extra_environment or {}):
                request = handler.input_fn(body, content_type)
                prediction = handler.predict_fn(request, loaded.model)
                payload, produced = handler.output_fn(prediction, accept)
        except getattr(handler, "BadRequest", ValueError) as exc:
            # The serving toolkit answers the handler's BadRequest with its status (400); the runtime wraps any
            # container error as ModelError (HTTP 424) naming that status.
            status = getattr(exc, "status_code", 400)
            raise EndpointError("ModelError", f'Received client error ({status}) from primary with message "{exc}"',
                                424) from None
        return (payload.encode() if isinstance(payload, str) else payload), produced

    def _load(self, model_data_url: str, environment: dict[str, str]) -> LoadedModel:
        """One loaded model per artifact and container environment (the model reads it as it loads)."""
        cache_key = (model_data_url, tuple(sorted(environment.items())))
        with self._lock:
            if cache_key not in self._models:
                self._models[cache_key] = self._fetch(model_data_url, environment)
            return self._models[cache_key]

    def _fetch(self, model_data_url: str, environment: dict[str, str]) -> LoadedModel:
        digest = hashlib.sha256(model_data_url.encode()).hexdigest()[:16]
        model_dir = self.workdir / digest
        model_dir.mkdir(parents=True, exist_ok=True)
        bucket, key = split_s3_uri(model_data_url)
        archive = model_dir.with_suffix(".tar.gz")
        boto3.client("s3").download_file(bucket, key, str(archive))
        with tarfile.open(archive) as tar:
            tar.extractall(model_dir, filter="data")
        code_dir = model_dir / "code"
        if str(code_dir) not in sys.path:
            sys.path.insert(0, str(code_dir))
        spec = importlib.util.spec_from_file_location(f"cxr_endpoint_{digest}", code_dir / "inference.py")
        handler = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = handler  # dataclasses look their module up while the module runs
        spec.loader.exec_module(handler)
        with environment_applied(environment):  # the container's environment, as the SageMaker model sets it
            model = handler.model_fn(str(model_dir))
        return LoadedModel(handler=handler, model=model, model_dir=model_dir)


def _location(path: str, extension: str | None, name: str) -> str:
    """``<output path>[/<extension>]/<name>``."""
    parts = [path.rstrip("/"), *([extension.strip("/")] if extension else []), name]
    return "/".join(parts)
