"""The narrow points where the offline cloud makes moto *execute* what it otherwise only records.

moto keeps the AWS APIs' state but runs Lambda code only in Docker (absent here), completes
SageMaker training and Batch Transform jobs instantly with no artifact or output, crashes on a binary
InvokeEndpoint body, and answers InvokeEndpointAsync with a fixed text in a bucket of its own, whatever
the endpoint, and gives every object an MD5 ETag, which S3 does not under SSE-KMS. Each hook below replaces exactly
one moto function with a real local execution or AWS's behaviour (UpdateModelPackage keeps what a
request leaves out), and three add the SageMaker actions moto lacks (UpdateEndpoint, StopTrainingJob,
DeleteModelPackage);
``check()`` fails loudly the moment a pinned-moto upgrade moves a hooked function or starts implementing a
missing action (tests call it).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import random
import uuid
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol
from unittest import mock
from urllib.parse import quote_plus, unquote

import moto.awslambda.models as lambda_models
import moto.s3.models as s3_models
import moto.s3.notifications as s3_notifications
import moto.sagemaker.models as sagemaker_models
import moto.sagemaker.responses as sagemaker_responses
import moto.sagemakerruntime.responses as runtime_responses
from moto.core.utils import utcnow
from moto.sagemaker.exceptions import ValidationError as SageMakerValidationError

from lambdas.domain import source_names

MOTO_VERSION = "5.2.5"

# (owner, attribute, parameter names it must still take): what each hook replaces.
HOOK_POINTS: tuple[tuple[Any, str, tuple[str, ...]], ...] = (
    (lambda_models.LambdaFunction, "_invoke_lambda", ("self", "event")),
    (s3_notifications, "_get_s3_event", ("event_name", "bucket", "key", "notification_id")),
    (s3_notifications, "_invoke_awslambda", ("account_id", "event_body", "fn_arn", "region_name")),
    (sagemaker_models.SageMakerModelBackend, "create_training_job", ("self", "training_job_name")),
    (sagemaker_models.SageMakerModelBackend, "create_transform_job", ("self", "transform_job_name", "model_name")),
    (runtime_responses.SageMakerRuntimeResponse, "invoke_endpoint", ("self",)),
    (runtime_responses.SageMakerRuntimeResponse, "invoke_endpoint_async", ("self",)),
    (runtime_responses.SageMakerRuntimeResponse, "setup_class", ("self", "request", "full_url", "headers",
                                                                 "use_raw_body")),
    (s3_models.FakeKey, "etag", ("self",)),  # a property: its getter's parameters
    (sagemaker_models.FakeEndpointConfig, "validate_instance_type", ("self", "instance_type")),
    (sagemaker_models.SageMakerModelBackend, "update_model_package",
     ("self", "model_package_arn", "model_approval_status", "approval_description", "customer_metadata_properties",
      "customer_metadata_properties_to_remove")),
)


HOOKED_PROPERTIES = {(s3_models.FakeKey, "etag")}
"""Hook points that are properties in moto (replaced by a property, so they must stay one)."""

SSE_KMS = ("aws:kms", "aws:kms:dsse")
"""``x-amz-server-side-encryption`` values whose objects S3 gives an ETag that is not the MD5 of the data."""

MISSING_ACTIONS: tuple[tuple[Any, str], ...] = (
    (sagemaker_responses.SageMakerResponse, "update_endpoint"),
    (sagemaker_responses.SageMakerResponse, "stop_training_job"),
    (sagemaker_responses.SageMakerResponse, "delete_model_package"),
)
"""SageMaker actions moto 5.2.5 does not implement at all, which the pipeline and teardown call."""


class Executors(Protocol):
    """What the local runtime provides to the hooks."""

    def run_function(self, function: Any, event: Any) -> tuple[Any, str | None]:
        """Run a Lambda function's real handler: (result, error type or None)."""

    def dead_letter_queue(self, function: Any) -> str | None:
        """The ARN of the SQS queue that receives the function's failed asynchronous events (moto keeps none)."""

    def start_training_job(self, job: Any) -> None:
        """Run the real training script for a job moto has just recorded."""

    def start_transform_job(self, job: Any) -> None:
        """Run a Batch Transform job moto has just recorded through the model's real handler."""

    def stop_training_job(self, job: Any) -> None:
        """Stop a running local training job as SageMaker does (SIGTERM, then Stopped)."""

    def invoke_endpoint(self, endpoint_name: str, body: bytes, content_type: str, accept: str) -> tuple[bytes, str]:
        """Serve a request with the real inference handler of the endpoint's model."""

    def invoke_endpoint_async(self, request: Any) -> tuple[str, str]:
        """Queue a request on an asynchronous endpoint: (output location, failure location)."""


def check() -> None:
    """Raise if the installed moto no longer has the functions we hook, with the signatures we rely on."""
    import moto

    if moto.__version__ != MOTO_VERSION:
        raise RuntimeError(f"the local mode's hooks are written for moto {MOTO_VERSION}, found {moto.__version__}")
    for owner, name, params in HOOK_POINTS:
        target = getattr(owner, name, None)
        if target is None:
            raise RuntimeError(f"moto {MOTO_VERSION}: {owner.__name__}.{name} is gone; the local mode cannot hook it")
        if (owner, name) in HOOKED_PROPERTIES:
            target = inspect.getattr_static(owner, name)
            if not isinstance(target, property):
                raise RuntimeError(f"moto: {owner.__name__}.{name} is no longer a property")
            target = target.fget
        actual = tuple(inspect.signature(target).parameters)
        if actual[: len(params)] != params:
            raise RuntimeError(f"moto: {owner.__name__}.{name}{actual} no longer starts with {params}")
    for owner, name in MISSING_ACTIONS:
        if hasattr(owner, name):
            raise RuntimeError(f"moto now implements {owner.__name__}.{name}: drop the local mode's own")


@contextmanager
def installed(executors: Executors):
    """Patch moto for the duration of the block."""
    check()
    with ExitStack() as stack:
        for owner, name, replacement in _replacements(executors):
            stack.enter_context(mock.patch.object(owner, name, replacement, create=(owner, name) in MISSING_ACTIONS))
        yield


@contextmanager
def aws_etags():
    """Only the ETag hook: for tests of code that reads ETags, without the rest of the offline cloud."""
    check()
    with mock.patch.object(s3_models.FakeKey, "etag", AWS_ETAG):
        yield


def _replacements(executors: Executors) -> list[tuple[Any, str, Callable]]:
    original_s3_event = s3_notifications._get_s3_event
    original_create_training_job = sagemaker_models.SageMakerModelBackend.create_training_job

    def invoke_lambda(function, event=None):
        """Synchronous invoke (Step Functions tasks, CLI): the result or AWS's error payload."""
        result, error = executors.run_function(function, event if event is not None else {})
        if error is None:
            return json.dumps(result), False, ""
        return json.dumps(result), True, ""

    def s3_event(event_name, bucket, key, notification_id):
        """moto's event lacks versionId and sequencer and encodes '/' in keys; S3 does neither."""
        event = original_s3_event(event_name, bucket, key, notification_id)
        obj = event["Records"][0]["s3"]["object"]
        obj["key"] = quote_plus(key.name, safe="/")
        if getattr(bucket, "is_versioned", False) and getattr(key, "version_id", None):
            obj["versionId"] = key.version_id
        obj["sequencer"] = next_sequencer()
        event["Records"][0]["userIdentity"] = {"principalId": "AWS:LOCAL"}
        return event

    def invoke_async(account_id, event_body, fn_arn, region_name):
        """S3 invokes Lambda asynchronously: retries, then the function's dead-letter queue (AWS semantics).

        Not for a name's pointer object (``lambdas/domain/source_names.py``), which the functions skip: moto
        delivers inside the PutObject a running function makes, and in the ``cxr local up`` server that nested
        delivery would wait for the function lock its own caller holds."""
        from moto.awslambda.utils import get_backend

        records = (json.loads(event_body) if isinstance(event_body, str | bytes) else event_body).get("Records", [])
        if records and all(source_names.is_pointer(unquote(r["s3"]["object"]["key"])) for r in records):
            return

        function = get_backend(account_id, region_name).get_function(fn_arn)
        for _ in range(1 + _max_retries(function)):
            result, error = executors.run_function(function, event_body)
            if error is None:
                return
        queue_arn = executors.dead_letter_queue(function)
        if queue_arn:
            _send_to_dead_letter_queue(queue_arn, event_body, result, region_name)

    def create_training_job(self, training_job_name, *args, **kwargs):
        job = original_create_training_job(self, training_job_name, *args, **kwargs)
        job.training_job_status = "InProgress"
        job.secondary_status = "Starting"
        job.training_end_time = None
        executors.start_training_job(job)
        return job

    original_create_transform_job = sagemaker_models.SageMakerModelBackend.create_transform_job

    def create_transform_job(self, transform_job_name, model_name, *args, **kwargs):
        if model_name not in self._models:  # AWS refuses a job for a model that does not exist; moto does not
            raise SageMakerValidationError(message=f"Could not find model \"{model_name}\".")
        job = original_create_transform_job(self, transform_job_name, model_name, *args, **kwargs)
        executors.start_transform_job(job)
        return job

    def invoke_endpoint(self):
        from cxr.local.endpoints import EndpointError

        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body, content_type = executors.invoke_endpoint(
                unquote(self.path.split("/")[2]),  # /endpoints/<name>/invocations
                self.raw_body if isinstance(self.raw_body, bytes) else (self.raw_body or "").encode(),
                headers.get("content-type", "application/octet-stream"),
                headers.get("accept", "application/json"),
            )
        except EndpointError as exc:
            return _error_response(exc)
        return 200, {"Content-Type": content_type, "x-Amzn-Invoked-Production-Variant": "AllTraffic"}, body

    def invoke_endpoint_async(self):
        """InvokeEndpointAsync: the request is queued on the endpoint's real handler, its result written to S3."""
        from cxr.local.endpoints import AsyncRequest, EndpointError

        headers = {k.lower(): v for k, v in self.headers.items()}
        inference_id = headers.get("x-amzn-sagemaker-inference-id") or str(uuid.uuid4())
        request = AsyncRequest(
            endpoint_name=unquote(self.path.split("/")[2]),  # /endpoints/<name>/async-invocations
            input_location=headers.get("x-amzn-sagemaker-inputlocation", ""),
            content_type=headers.get("x-amzn-sagemaker-content-type", "application/octet-stream"),
            accept=headers.get("x-amzn-sagemaker-accept", "application/json"),
            inference_id=inference_id,
            filename=headers.get("x-amzn-sagemaker-filename"),
            path_extension=headers.get("x-amzn-sagemaker-s3outputpathextension"),
        )
        try:
            output, failure = executors.invoke_endpoint_async(request)
        except EndpointError as exc:
            return _error_response(exc)
        headers = {"X-Amzn-SageMaker-OutputLocation": output, "X-Amzn-SageMaker-FailureLocation": failure,
                   "status": 202}  # the status moto sends (see _error_response); AWS answers 202 Accepted
        return 202, headers, json.dumps({"InferenceId": inference_id})

    original_setup = runtime_responses.SageMakerRuntimeResponse.setup_class

    def setup_raw(self, request, full_url=None, headers=None, use_raw_body=None):
        """Keep InvokeEndpoint bodies as bytes: moto decodes them as UTF-8 and fails on an image."""
        return original_setup(self, request, full_url, headers, use_raw_body=True)

    def update_endpoint(self):
        """UpdateEndpoint: the endpoint moves to the new configuration (moto has no such action)."""
        backend = self.sagemaker_backend
        name, config_name = self._get_param("EndpointName"), self._get_param("EndpointConfigName")
        endpoint = backend.endpoints.get(name)
        config = backend.endpoint_configs.get(config_name)
        if endpoint is None or config is None:
            missing = f"endpoint '{name}'" if endpoint is None else f"endpoint configuration '{config_name}'"
            raise SageMakerValidationError(message=f"Could not find {missing}.")
        endpoint.endpoint_config_name = config_name
        endpoint.production_variants = endpoint._process_production_variants(config.production_variants)
        endpoint.endpoint_status = "InService"
        endpoint.last_modified_time = utcnow()
        return json.dumps({"EndpointArn": endpoint.arn})

    def stop_training_job(self):
        """StopTrainingJob: moto has no such action; the local job gets SIGTERM."""
        name = self._get_param("TrainingJobName")
        job = self.sagemaker_backend.training_jobs.get(name)
        if job is None:
            raise SageMakerValidationError(message=f"Could not find training job '{name}'.")
        executors.stop_training_job(job)
        return "{}"

    def delete_model_package(self):
        """DeleteModelPackage (moto has no such action): the package leaves its group, its version number stays
        used, as SageMaker numbers versions."""
        backend, name = self.sagemaker_backend, self._get_param("ModelPackageName")
        key = backend.model_package_name_mapping.get(name, name)
        if backend.model_packages.pop(key, None) is None:
            raise SageMakerValidationError(message=f"Model package {name} not found")
        return "{}"

    return [
        (sagemaker_responses.SageMakerResponse, "delete_model_package", delete_model_package),
        (sagemaker_models.SageMakerModelBackend, "update_model_package", update_model_package),
        (sagemaker_models.FakeEndpointConfig, "validate_instance_type", validate_hosting_instance_type),
        (s3_models.FakeKey, "etag", AWS_ETAG),
        (sagemaker_responses.SageMakerResponse, "update_endpoint", update_endpoint),
        (sagemaker_responses.SageMakerResponse, "stop_training_job", stop_training_job),
        (runtime_responses.SageMakerRuntimeResponse, "setup_class", setup_raw),
        (lambda_models.LambdaFunction, "_invoke_lambda", lambda self, event=None: invoke_lambda(self, event)),
        (s3_notifications, "_get_s3_event", s3_event),
        (s3_notifications, "_invoke_awslambda", invoke_async),
        (sagemaker_models.SageMakerModelBackend, "create_training_job", create_training_job),
        (sagemaker_models.SageMakerModelBackend, "create_transform_job", create_transform_job),
        (runtime_responses.SageMakerRuntimeResponse, "invoke_endpoint", invoke_endpoint),
        (runtime_responses.SageMakerRuntimeResponse, "invoke_endpoint_async", invoke_endpoint_async),
    ]


_moto_update_model_package = sagemaker_models.SageMakerModelBackend.update_model_package


def update_model_package(self, model_package_arn, model_approval_status, approval_description,
                         customer_metadata_properties, customer_metadata_properties_to_remove, *args, **kwargs):
    """UpdateModelPackage changes only what the request names, as AWS does.

    moto 5.2.5 sets every field the request leaves out to None (an update without ``ModelApprovalStatus``
    clears the status) and replaces ``CustomerMetadataProperties`` whole; SageMaker keeps what is not given
    and adds or overwrites the given properties ("CustomerMetadataProperties: the metadata properties
    associated with the model package versions", removed only by ``CustomerMetadataPropertiesToRemove``:
    SageMaker API Reference, ``UpdateModelPackage``).
    """
    package = self.model_packages.get(self.model_package_name_mapping.get(model_package_arn, model_package_arn))
    if package is not None:
        model_approval_status = model_approval_status or package.model_approval_status
        approval_description = approval_description if approval_description is not None else \
            package.approval_description
        customer_metadata_properties = {**(package.customer_metadata_properties or {}),
                                        **(customer_metadata_properties or {})}
    return _moto_update_model_package(self, model_package_arn, model_approval_status, approval_description,
                                      customer_metadata_properties, customer_metadata_properties_to_remove,
                                      *args, **kwargs)


def validate_hosting_instance_type(self, instance_type: str) -> None:
    """CreateEndpointConfig's instance types as AWS lists them: botocore's ``ProductionVariantInstanceType`` enum.

    moto 5.2.5 accepts only an old subset (no ``ml.c6i.*``, the configuration's default), so it would refuse
    what AWS serves; the enum in the service model is AWS's own list, and an unknown type is still refused.
    """
    if instance_type not in _hosting_instance_types():
        raise SageMakerValidationError(
            message=f"Value '{instance_type}' at 'instanceType' failed to satisfy constraint: "
                    "Member must satisfy enum value set of ProductionVariantInstanceType")


@functools.cache
def _hosting_instance_types() -> frozenset[str]:
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    return frozenset(model.shape_for("ProductionVariantInstanceType").enum)


def _error_response(exc) -> tuple[int, dict, str]:
    """A SageMaker Runtime error as the service sends it: the error name in the body and in x-amzn-ErrorType.

    moto takes a response's status from its ``status`` header (``BaseResponse._transform_response``), not
    from the tuple: without it every error would reach the client as a 200.
    """
    error = json.dumps({"__type": exc.code, "message": str(exc)})
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": exc.code, "status": exc.status}
    return exc.status, headers, error


_moto_etag = s3_models.FakeKey.etag


def _aws_etag(key) -> str:
    """S3's ETag: the MD5 of the data only for single-part objects in plaintext or SSE-S3.

    "Objects created by the PUT Object, POST Object, or Copy operation [...] and are encrypted by
    SSE-C or SSE-KMS, have ETags that are not an MD5 digest of their object data" (S3 API
    Reference, ``Object.ETag``). moto gives them all an MD5, so code that compares ETags with
    digests passes here and fails on AWS; this gives SSE-KMS objects an opaque ETag instead, fixed
    per object version (derived from the version, its write time and the key, never the data alone).
    Multipart objects keep moto's ``<md5 of part md5s>-<parts>``, not a data MD5 either.
    """
    if key._etag is None and key.encryption in SSE_KMS:
        data_md5 = _moto_etag.fget(key)
        identity = f"{key.kms_key_id}|{key.bucket_name}|{key.name}|{key.version_id}|{key.last_modified.isoformat()}"
        key._etag = hashlib.md5(f"{identity}|{data_md5}".encode(), usedforsecurity=False).hexdigest()
    return _moto_etag.fget(key)


AWS_ETAG = property(_aws_etag)


_sequencer = random.Random(0).randrange(1 << 40)


def next_sequencer() -> str:
    """The sequencer of the next S3 event the offline cloud delivers: increasing across creates and removals."""
    global _sequencer
    _sequencer += 1
    return f"{_sequencer:016X}"


def _max_retries(function) -> int:
    configs = getattr(function, "event_invoke_config", [])
    for config in configs:
        retries = config.config.get("MaximumRetryAttempts")
        if retries is not None:
            return int(retries)
    return 2  # Lambda's default for asynchronous invocations


def _send_to_dead_letter_queue(queue_arn: str, event_body: Any, result: Any, region_name: str) -> None:
    """What Lambda puts in a function's SQS dead-letter queue: the event itself, the error as attributes."""
    import boto3

    sqs = boto3.client("sqs", region_name=region_name)
    queue_url = sqs.get_queue_url(QueueName=queue_arn.rsplit(":", 1)[1])["QueueUrl"]
    error = result if isinstance(result, dict) else {}
    sqs.send_message(
        QueueUrl=queue_url,
        MessageBody=json.dumps(event_body),
        MessageAttributes={
            "ErrorCode": {"DataType": "String", "StringValue": "200"},
            "ErrorMessage": {"DataType": "String", "StringValue": str(error.get("errorMessage", ""))[:1000] or "-"},
            "ErrorType": {"DataType": "String", "StringValue": str(error.get("errorType", "Unhandled"))},
        },
    )
