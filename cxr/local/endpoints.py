"""Local SageMaker endpoints: the real ``code/inference.py`` of the deployed model artifact serves each request.

An endpoint resolves as SageMaker resolves it: endpoint -> endpoint config -> model ->
``ModelDataUrl``; the ``model.tar.gz`` is fetched from (local) S3, unpacked once, and its own
handler functions are loaded from ``code/`` in the order the PyTorch inference toolkit calls them.
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

from cxr.local.iam_trace import acting_as
from lambdas.domain.layout import split_s3_uri


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
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def invoke(self, endpoint_name: str, body: bytes, content_type: str, accept: str) -> tuple[bytes, str]:
        sagemaker = boto3.client("sagemaker")
        try:
            endpoint = sagemaker.describe_endpoint(EndpointName=endpoint_name)
        except sagemaker.exceptions.ClientError:
            raise EndpointError("ValidationError", f"Endpoint {endpoint_name} not found.", 400) from None
        if endpoint["EndpointStatus"] not in ("InService", "Updating"):
            raise EndpointError("ValidationError", f"Endpoint {endpoint_name} is {endpoint['EndpointStatus']}", 400)
        config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
        model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
        with acting_as(model["ExecutionRoleArn"]):  # the container fetches its artifact as the model's role
            loaded = self._load(model["PrimaryContainer"]["ModelDataUrl"])
        handler = loaded.handler
        try:
            request = handler.input_fn(body, content_type)
            prediction = handler.predict_fn(request, loaded.model)
            payload, produced = handler.output_fn(prediction, accept)
        except getattr(handler, "BadRequest", ValueError) as exc:
            # The PyTorch toolkit answers a handler exception with an error status; the runtime reports ModelError.
            raise EndpointError("ModelError", f"Received client error (400) from primary: {exc}", 424) from None
        return (payload.encode() if isinstance(payload, str) else payload), produced

    def _load(self, model_data_url: str) -> LoadedModel:
        with self._lock:
            if model_data_url not in self._models:
                self._models[model_data_url] = self._fetch(model_data_url)
            return self._models[model_data_url]

    def _fetch(self, model_data_url: str) -> LoadedModel:
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
        return LoadedModel(handler=handler, model=handler.model_fn(str(model_dir)), model_dir=model_dir)
