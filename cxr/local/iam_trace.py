"""What each principal of the offline cloud asks AWS to do, written down as IAM sees it.

Every AWS call a Lambda handler, the state machine, a training job or an endpoint's model makes
becomes a :class:`Call`: the principal (its role's ARN), the IAM action, the resource ARN and the
request context that conditions read (``s3:prefix``, ``iam:PassedToService``...). Calls are caught
in botocore's ``BaseClient._make_api_call``, which every client goes through: an event handler
would miss clients created before it was registered (each client copies its session's handlers),
and the handlers' clients are cached across invocations. Who is calling is a context variable,
set by the executors with :func:`acting_as` (:mod:`cxr.local.functions` for a handler,
:mod:`cxr.local.training` for a job, :mod:`cxr.local.endpoints` for a model); it follows work handed
to thread pools (S3 transfers), and is unset while a service handles a request, so moto's and the
local runtime's own calls are nobody's.

The permissions AWS implies without a call of the principal's own are added from the request:
``iam:PassRole`` for a role passed to SageMaker, ``sagemaker:AddTags`` for tags on create,
``s3:PutObjectRetention`` for an upload with an Object Lock retention period and
``s3:BypassGovernanceRetention`` for a delete that bypasses governance mode, the
execution role's ``kms:CreateGrant`` / ``kms:Encrypt`` for a training job's volume and output keys,
the ``createTrainingJob.sync`` integration's own calls, and the start of a SageMaker container as
its role (an :class:`Event` that :mod:`cxr.local.iam_deployment` turns into image pulls, logs and
metrics once it knows the deployment). The state machine's task calls come from its executions'
history (:meth:`Recorder.record_executions`).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import inspect
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import unquote, urlparse

import boto3
import botocore.client

from cxr.local.names import ACCOUNT
from infra import wiring

_PRINCIPAL: contextvars.ContextVar[str | None] = contextvars.ContextVar("cxr_iam_principal", default=None)
_active: Recorder | None = None

SAGEMAKER = "sagemaker.amazonaws.com"
SYNC_RULE = "StepFunctionsGetEventsForSageMakerTrainingJobsRule"
"""The EventBridge rule Step Functions manages for ``createTrainingJob.sync``."""


@dataclass(frozen=True)
class Call:
    """One authorization a principal needs; ``source`` says which API call (or AWS behaviour) needs it."""

    principal: str
    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()
    source: str = ""

    def as_dict(self) -> dict:
        return {"principal": self.principal, "action": self.action, "resource": self.resource,
                "context": dict(self.context), "source": self.source}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Call:
        return cls(data["principal"], data["action"], data["resource"], tuple(sorted(data["context"].items())),
                   data["source"])


@dataclass(frozen=True)
class Event:
    """Something AWS does as a principal whose calls depend on the deployment (a Lambda runtime's logs...)."""

    kind: str
    """``lambda`` (a function ran), ``container`` (a SageMaker container started), ``state-machine``."""
    principal: str
    details: tuple[tuple[str, str], ...]

    def detail(self, name: str) -> str:
        return dict(self.details)[name]


def call(principal: str, action: str, resource: str, source: str, **context: str) -> Call:
    return Call(principal, action, resource, tuple(sorted(context.items())), source)


@contextmanager
def acting_as(principal: str | None, *, lambda_function: str | None = None) -> Iterator[None]:
    """Make the calls of this block (and of work it hands to thread pools) ``principal``'s; None: nobody's.

    ``lambda_function`` names the Lambda function whose runtime this is (its logs and traces are the role's).
    """
    if _active is not None and principal and lambda_function:
        _active.event("lambda", principal, function=lambda_function)
    token = _PRINCIPAL.set(principal)
    try:
        yield
    finally:
        _PRINCIPAL.reset(token)


class Recorder:
    """The calls and events of one offline cloud's life."""

    def __init__(self, *, sync_callers: frozenset[str] = frozenset()):
        self.calls: dict[Call, None] = {}  # insertion-ordered set
        self.events: dict[Event, None] = {}
        self.sync_callers = sync_callers
        """Principals that call CreateTrainingJob through the ``.sync`` integration (state machine roles)."""
        self._lock = threading.Lock()
        self._models: dict[str, tuple[str, str]] = {}  # model -> (execution role, image)
        self._configs: dict[str, tuple[list[str], str | None]] = {}  # endpoint config -> (models, KMS key)

    def add(self, *calls: Call) -> None:
        with self._lock:
            self.calls.update(dict.fromkeys(calls))

    def event(self, kind: str, principal: str, **details: str) -> None:
        with self._lock:
            self.events[Event(kind, principal, tuple(sorted(details.items())))] = None

    def api_call(self, principal: str, service: str, region: str, operation: str, params: Mapping[str, Any]) -> None:
        """Record one API call with what it implies."""
        source = f"{service}.{operation}"
        mapped = _OPERATIONS.get(service)
        found = mapped(region, operation, params) if mapped else None
        if found is None:
            self.add(call(principal, f"unmapped:{source}", "*", source))
            return
        self.add(*(call(principal, action, resource, source, **context) for action, resource, context in found))
        if service == "sagemaker":
            self._sagemaker_implied(principal, region, operation, params, source)

    def record_executions(self, state_machine_arn: str, *, skip_functions: frozenset[str] = frozenset()) -> None:
        """The state machine's task calls, from its executions' history, as its role makes them.

        ``skip_functions``: Lambda tasks that stand in locally for a service integration (recorded elsewhere).
        """
        sfn = boto3.client("stepfunctions", region_name=state_machine_arn.split(":")[3])
        role = sfn.describe_state_machine(stateMachineArn=state_machine_arn)["roleArn"]
        self.event("state-machine", role, state_machine=state_machine_arn)
        for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=state_machine_arn):
            for execution in page["executions"]:
                for history in sfn.get_paginator("get_execution_history").paginate(
                        executionArn=execution["executionArn"]):
                    for event in history["events"]:
                        self._task_call(role, event, skip_functions)

    def _task_call(self, role: str, event: Mapping[str, Any], skip_functions: frozenset[str]) -> None:
        if "taskScheduledEventDetails" in event:
            details = event["taskScheduledEventDetails"]
            operation = details["resource"][:1].upper() + details["resource"][1:]  # "publish" -> "Publish"
            self.api_call(role, details["resourceType"], details["region"], operation,
                          json.loads(details["parameters"]))
        elif "lambdaFunctionScheduledEventDetails" in event:
            function = event["lambdaFunctionScheduledEventDetails"]["resource"]
            if function not in skip_functions:
                self.add(call(role, "lambda:InvokeFunction", function, "states.lambda"))

    def _sagemaker_implied(self, principal: str, region: str, operation: str, params: Mapping[str, Any],
                           source: str) -> None:
        created = _sagemaker_resources(region, operation, params)
        if operation.startswith("Create") and params.get("Tags") and created:
            self.add(call(principal, "sagemaker:AddTags", created[0], f"{source} with Tags"))
        if operation == "CreateTrainingJob":
            self._training_job(principal, region, params, source)
        elif operation == "CreateModel":
            role = params["ExecutionRoleArn"]
            self.add(_pass_role(principal, role, created[0], source))
            container = params.get("PrimaryContainer") or params["Containers"][0]
            self._models[params["ModelName"]] = (role, container["Image"])
        elif operation == "CreateEndpointConfig":
            models = [variant["ModelName"] for variant in params["ProductionVariants"]]
            self._configs[params["EndpointConfigName"]] = (models, params.get("KmsKeyId"))
        elif operation in ("CreateEndpoint", "UpdateEndpoint"):
            self._endpoint(principal, region, params, source)

    def _training_job(self, principal: str, region: str, params: Mapping[str, Any], source: str) -> None:
        job = _arn("sagemaker", region, f"training-job/{params['TrainingJobName'].lower()}")
        role = params["RoleArn"]
        self.add(_pass_role(principal, role, job, source))
        # The execution role's key permissions for the job's volume and output
        # (https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-roles.html#sagemaker-roles-createtrainingjob-perms).
        volume_key = params.get("ResourceConfig", {}).get("VolumeKmsKeyId")
        if volume_key:
            self.add(_grant(role, region, volume_key, f"{source} VolumeKmsKeyId"))
        output_key = params.get("OutputDataConfig", {}).get("KmsKeyId")
        if output_key:
            self.add(call(role, "kms:Encrypt", _key_arn(region, output_key), f"{source} OutputDataConfig.KmsKeyId"))
        self.event("container", role, image=params["AlgorithmSpecification"]["TrainingImage"],
                   log_group=wiring.TRAINING_LOG_GROUP, log_stream=f"{params['TrainingJobName']}/algo-1-0",
                   namespace=wiring.TRAINING_LOG_GROUP, region=region)
        if principal in self.sync_callers:
            # The integration's own calls: AWS's documented policy for createTrainingJob.sync
            # (https://docs.aws.amazon.com/step-functions/latest/dg/sagemaker-iam.html).
            sync = "states.sagemaker:createTrainingJob.sync"
            rule = _arn("events", region, f"rule/{SYNC_RULE}")
            self.add(*(call(principal, f"events:{action}", rule, sync)
                       for action in ("PutTargets", "PutRule", "DescribeRule")),
                     *(call(principal, f"sagemaker:{action}", job, sync)
                       for action in ("DescribeTrainingJob", "StopTrainingJob", "ListTags")))

    def _endpoint(self, principal: str, region: str, params: Mapping[str, Any], source: str) -> None:
        """An endpoint (re)started on a configuration: its models' containers start as their roles."""
        if params["EndpointConfigName"] not in self._configs:
            return  # a configuration made before recording began
        models, key = self._configs[params["EndpointConfigName"]]
        if key:  # "The KMS key policy must grant permission to the IAM role that you specify in your
            # CreateEndpoint, UpdateEndpoint requests" (EndpointConfig KmsKeyId, SageMaker API reference)
            self.add(_grant(principal, region, key, f"{source} (configuration KmsKeyId)"))
        log_group = wiring.endpoint_log_group(params["EndpointName"])
        for model in models:
            if model in self._models:
                role, image = self._models[model]
                self.event("container", role, image=image, log_group=log_group, log_stream="AllTraffic/i-0",
                           namespace="/aws/sagemaker/Endpoints", region=region)


@contextmanager
def recording(*, sync_callers: frozenset[str] = frozenset()) -> Iterator[Recorder]:
    """Record every call made under :func:`acting_as` for the block."""
    global _active
    recorder = Recorder(sync_callers=sync_callers)
    original_call = botocore.client.BaseClient._make_api_call
    if tuple(inspect.signature(original_call).parameters) != ("self", "operation_name", "api_params"):
        raise RuntimeError("botocore's BaseClient._make_api_call changed: the IAM trace cannot record calls")
    original_submit = concurrent.futures.ThreadPoolExecutor.submit

    def make_api_call(client, operation_name, api_params):
        principal = _PRINCIPAL.get()
        if principal is not None:
            recorder.api_call(principal, client.meta.service_model.service_name, client.meta.region_name,
                              operation_name, api_params)
        token = _PRINCIPAL.set(None)  # the service handling the request acts as itself
        try:
            return original_call(client, operation_name, api_params)
        finally:
            _PRINCIPAL.reset(token)

    def submit(executor, fn, /, *args, **kwargs):
        return original_submit(executor, contextvars.copy_context().run, fn, *args, **kwargs)

    if _active is not None:
        raise RuntimeError("already recording")
    with (mock.patch.object(botocore.client.BaseClient, "_make_api_call", make_api_call),
          mock.patch.object(concurrent.futures.ThreadPoolExecutor, "submit", submit)):
        _active = recorder
        try:
            yield recorder
        finally:
            _active = None


def save(path: Path, calls: list[Call], events: list[Event]) -> None:
    """The trace as JSON: every call with its source, then the events the deployment expanded."""
    path.write_text(json.dumps({"calls": [c.as_dict() for c in calls],
                                "events": [{"kind": e.kind, "principal": e.principal, **dict(e.details)}
                                           for e in events]}, indent=1))


# --- API operation -> (IAM action, resource ARN, condition keys) ---------------------------------------------
Mapped = list[tuple[str, str, dict[str, str]]]


def _arn(service: str, region: str, resource: str) -> str:
    return f"arn:aws:{service}:{region}:{ACCOUNT}:{resource}"


def _key_arn(region: str, key: str) -> str:
    return key if key.startswith("arn:") else _arn("kms", region, key if key.startswith("alias/") else f"key/{key}")


def _grant(principal: str, region: str, key: str, source: str) -> Call:
    """SageMaker creates a KMS grant for the principal's key use (a grant for an AWS resource)."""
    return call(principal, "kms:CreateGrant", _key_arn(region, key), source,
                **{"kms:GrantIsForAWSResource": "true", "kms:ViaService": f"sagemaker.{region}.amazonaws.com"})


def _pass_role(principal: str, role: str, resource: str, source: str) -> Call:
    return call(principal, "iam:PassRole", role, f"{source} passes its role",
                **{"iam:PassedToService": SAGEMAKER, "iam:AssociatedResourceArn": resource})


def _s3(region: str, operation: str, p: Mapping[str, Any]) -> Mapped | None:
    """S3's actions (https://docs.aws.amazon.com/AmazonS3/latest/API/API_Operations.html, "Permissions")."""
    tls = {"aws:SecureTransport": "true", "s3:TlsVersion": "1.3"}
    bucket = f"arn:aws:s3:::{p.get('Bucket')}"
    obj = f"{bucket}/{p.get('Key')}"
    versioned = "VersionId" in p
    if operation in ("GetObject", "HeadObject"):
        return [("s3:GetObjectVersion" if versioned else "s3:GetObject", obj, tls)]
    if operation in ("PutObject", "CreateMultipartUpload"):  # a retention period also needs s3:PutObjectRetention
        return [("s3:PutObject", obj, tls)] + ([("s3:PutObjectRetention", obj, tls)] if "ObjectLockMode" in p else [])
    if operation in ("UploadPart", "CompleteMultipartUpload"):
        return [("s3:PutObject", obj, tls)]
    if operation == "AbortMultipartUpload":
        return [("s3:AbortMultipartUpload", obj, tls)]
    if operation == "DeleteObject":  # lifting a governance lock on the way needs s3:BypassGovernanceRetention
        bypass = [("s3:BypassGovernanceRetention", obj, tls)] if p.get("BypassGovernanceRetention") else []
        return [("s3:DeleteObjectVersion" if versioned else "s3:DeleteObject", obj, tls)] + bypass
    if operation == "CopyObject":
        source = p["CopySource"]
        if isinstance(source, str):
            path, _, query = unquote(source.lstrip("/")).partition("?versionId=")
            source = {"Bucket": path.split("/", 1)[0], "Key": path.split("/", 1)[1], **({"VersionId": query}
                                                                                         if query else {})}
        read = "s3:GetObjectVersion" if "VersionId" in source else "s3:GetObject"
        return [(read, f"arn:aws:s3:::{source['Bucket']}/{source['Key']}", tls), ("s3:PutObject", obj, tls)]
    if operation in ("ListObjectsV2", "ListObjects", "ListObjectVersions", "HeadBucket"):
        listing = {**tls, **({"s3:prefix": p["Prefix"]} if "Prefix" in p else {})}
        return [("s3:ListBucketVersions" if operation == "ListObjectVersions" else "s3:ListBucket", bucket, listing)]
    return None


def _dynamodb(region: str, operation: str, p: Mapping[str, Any]) -> Mapped | None:
    if "TableName" in p:
        return [(f"dynamodb:{operation}", _arn("dynamodb", region, f"table/{p['TableName']}"), {})]
    return None


def _ssm(region: str, operation: str, p: Mapping[str, Any]) -> Mapped | None:
    names = p.get("Names") or ([p["Name"]] if "Name" in p else [])
    return [(f"ssm:{operation}", _arn("ssm", region, f"parameter/{name.lstrip('/')}"), {}) for name in names] or None


def _sns(region: str, operation: str, p: Mapping[str, Any]) -> Mapped | None:
    topic = p.get("TopicArn") or p.get("TargetArn")
    return [(f"sns:{operation}", topic, {})] if operation == "Publish" and topic else None


def _sqs(region: str, operation: str, p: Mapping[str, Any]) -> Mapped | None:
    if "QueueUrl" in p:
        _, account, name = urlparse(p["QueueUrl"]).path.split("/")
        return [(f"sqs:{operation}", f"arn:aws:sqs:{region}:{account}:{name}", {})]
    return None


def _lambda(region: str, operation: str, p: Mapping[str, Any]) -> Mapped | None:
    name = p.get("FunctionName", "")
    arn = name if name.startswith("arn:") else _arn("lambda", region, f"function:{name}")
    return [("lambda:InvokeFunction", arn, {})] if operation in ("Invoke", "InvokeAsync") else None


_SAGEMAKER_RESOURCES = {
    "TrainingJob": ("training-job", "TrainingJobName"),
    "Model": ("model", "ModelName"),
    "EndpointConfig": ("endpoint-config", "EndpointConfigName"),
    "Endpoint": ("endpoint", "EndpointName"),
    "TransformJob": ("transform-job", "TransformJobName"),
}


def _sagemaker_resources(region: str, operation: str, p: Mapping[str, Any]) -> list[str]:
    """The resources a SageMaker action is authorized on (Create/UpdateEndpoint: the endpoint, then its config;
    CreateModelPackage in a group: the group; Describe/UpdateModelPackage: the versioned package's ARN)."""
    if "ResourceArn" in p:
        return [p["ResourceArn"]]
    if operation == "CreateModelPackage" and "ModelPackageGroupName" in p:
        return [_arn("sagemaker", region, f"model-package-group/{p['ModelPackageGroupName'].lower()}")]
    package = p.get("ModelPackageArn") or p.get("ModelPackageName")
    if operation in ("DescribeModelPackage", "UpdateModelPackage") and package:
        return [package if package.startswith("arn:")
                else _arn("sagemaker", region, f"model-package/{package.lower()}")]
    for noun, (kind, parameter) in _SAGEMAKER_RESOURCES.items():
        if operation.endswith(noun) and parameter in p:
            found = [_arn("sagemaker", region, f"{kind}/{p[parameter].lower()}")]
            if noun == "Endpoint" and "EndpointConfigName" in p:
                found.append(_arn("sagemaker", region, f"endpoint-config/{p['EndpointConfigName'].lower()}"))
            return found
    return []


def _sagemaker(region: str, operation: str, p: Mapping[str, Any]) -> Mapped | None:
    if operation.startswith("List") and operation != "ListTags":
        return [(f"sagemaker:{operation}", "*", {})]
    resources = _sagemaker_resources(region, operation, p)
    return [(f"sagemaker:{operation}", resource, {}) for resource in resources] or None


def _sagemaker_runtime(region: str, operation: str, p: Mapping[str, Any]) -> Mapped | None:
    if operation in ("InvokeEndpoint", "InvokeEndpointAsync"):
        return [(f"sagemaker:{operation}", _arn("sagemaker", region, f"endpoint/{p['EndpointName'].lower()}"), {})]
    return None


def _kms(region: str, operation: str, p: Mapping[str, Any]) -> Mapped | None:
    return [(f"kms:{operation}", _key_arn(region, p["KeyId"]), {})] if "KeyId" in p else None


def _events(region: str, operation: str, p: Mapping[str, Any]) -> Mapped | None:
    rule = p.get("Name") or p.get("Rule")
    return [(f"events:{operation}", _arn("events", region, f"rule/{rule}"), {})] if rule else None


def _cloudwatch(region: str, operation: str, p: Mapping[str, Any]) -> Mapped | None:
    if operation == "PutMetricData":
        return [("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": p["Namespace"]})]
    return None


def _logs(region: str, operation: str, p: Mapping[str, Any]) -> Mapped | None:
    """CloudWatch Logs authorizes group-level actions on ``log-group:<name>:log-stream:`` and stream-level
    ones on ``...:log-stream:<stream>`` (the ARNs its AccessDenied messages quote; vectordotdev/vector#714)."""
    if "logGroupName" not in p:
        return None
    group = _arn("logs", region, f"log-group:{p['logGroupName']}:log-stream:")
    return [(f"logs:{operation}", group + p.get("logStreamName", ""), {})]


def _xray(region: str, operation: str, p: Mapping[str, Any]) -> Mapped | None:
    return [(f"xray:{operation}", "*", {})]


def _secretsmanager(region: str, operation: str, p: Mapping[str, Any]) -> Mapped | None:
    """A secret named by ARN or by name (then its ARN as AWS forms it, six random characters appended)."""
    secret = p.get("SecretId", "")
    arn = secret if secret.startswith("arn:") else _arn("secretsmanager", region, f"secret:{secret}-xxxxxx")
    return [(f"secretsmanager:{operation}", arn, {})] if secret else None


def _states(region: str, operation: str, p: Mapping[str, Any]) -> Mapped | None:
    arn = p.get("stateMachineArn") or p.get("executionArn")
    return [(f"states:{operation}", arn, {})] if arn else None


_OPERATIONS = {
    "s3": _s3, "dynamodb": _dynamodb, "ssm": _ssm, "sns": _sns, "sqs": _sqs, "lambda": _lambda,
    "sagemaker": _sagemaker, "sagemaker-runtime": _sagemaker_runtime, "kms": _kms, "events": _events,
    "cloudwatch": _cloudwatch, "logs": _logs, "xray": _xray, "stepfunctions": _states,
    "secretsmanager": _secretsmanager,
}
"""botocore service name -> the mapping of its operations; an operation mapped to None is recorded as
``unmapped:<service>.<operation>``, which no policy allows: a new call fails the test until it is mapped."""
