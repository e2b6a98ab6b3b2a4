"""The IAM of the synthesized deployment, resolved to the offline cloud's names, and a trace checked against it.

From the CDK app's templates: each role's identity-based policies (inline, ``AWS::IAM::Policy`` and
the project's managed policies) and trust policy, the KMS key policy and the bucket policies, every
reference resolved to the offline cloud's value (:class:`cxr.local.references.LocalValues`), as the
state machine's definition is. And what AWS does as a principal in ways that depend on the
deployment, added to a recorded trace (:mod:`cxr.local.iam_trace`) by :meth:`Deployment.expand`:

* KMS behind SSE-KMS buckets (``GenerateDataKey`` to write, ``Decrypt`` to read, both for multipart
  uploads: https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html), KMS-encrypted
  topics and queues (the sender's ``GenerateDataKey`` and ``Decrypt``:
  https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html);
* a Lambda runtime's log stream and events in the function's log group, and X-Ray segments when
  tracing is active; a state machine's X-Ray calls when tracing is on;
* a SageMaker container's image pull, logs and metrics as its execution role
  (https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-roles.html);
* the service assuming each role (its trust policy must allow it).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cxr.local.iam_policy import Policy, Request, UnsupportedPolicy, evaluate, without_action
from cxr.local.iam_trace import Call, Event, call
from cxr.local.names import ACCOUNT, REGION, LocalNames
from cxr.local.references import LocalValues
from infra import asl

ECR_IMAGE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?/"
                       r"(?P<repository>[^:@]+)")
LAMBDA_STREAM = "2026/01/01/[$LATEST]local"
"""A log stream name of the form Lambda gives each execution environment's stream."""


@dataclass
class Role:
    arn: str
    logical_id: str
    trust: Policy
    policies: list[Policy]
    aws_managed: list[str]
    """AWS managed policies attached (their documents are not in the templates: the evaluator refuses them)."""


@dataclass(frozen=True)
class Denial:
    call: Call
    reason: str

    def __str__(self) -> str:
        c = self.call
        return f"{_short(c.principal)} may not {c.action} on {c.resource} (needed by {c.source}): {self.reason}"


@dataclass(frozen=True)
class Function:
    log_group: str
    tracing: bool


class Deployment:
    """The policies and settings of one synthesized deployment, by the offline cloud's ARNs."""

    def __init__(self, roles: dict[str, Role], key_policies: dict[str, Policy], bucket_policies: dict[str, Policy],
                 encryption: dict[str, str], bucket_keys: set[str], functions: dict[str, Function],
                 traced_state_machines: set[str], stand_ins: dict[str, str]):
        self.roles = roles
        self.key_policies = key_policies
        self.bucket_policies = bucket_policies
        self.encryption = encryption
        """Bucket name, topic ARN or queue ARN -> the KMS key that encrypts it."""
        self.bucket_keys = bucket_keys
        """Buckets with S3 Bucket Keys (the encryption context names the bucket, not the object)."""
        self.functions = functions
        self.traced_state_machines = traced_state_machines
        self.stand_ins = stand_ins
        """A function environment's local stand-in value -> the synthesized value (the local inference image)."""

    @classmethod
    def from_templates(cls, templates: list[Mapping], names: LocalNames, kms_key_arn: str,
                       local_environments: Mapping[str, Mapping[str, str]] | None = None) -> Deployment:
        """``local_environments``: each local function's environment, to map its stand-in values back."""
        values = LocalValues(templates, names, kms_key_arn)
        of_type: dict[str, dict[str, Mapping]] = {}
        for logical_id, resource in values.resources.items():
            of_type.setdefault(resource["Type"], {})[logical_id] = resource["Properties"]
        deployment = cls(_roles(values, of_type), {}, {}, {}, set(), {}, set(), {})
        for logical_id, props in of_type.get("AWS::KMS::Key", {}).items():
            deployment.key_policies[values[f"{logical_id}.Arn"]] = Policy(
                f"the key policy of {logical_id}", values.resolve(props["KeyPolicy"]))
        for props in of_type.get("AWS::S3::BucketPolicy", {}).values():
            bucket = values.resolve(props["Bucket"])
            deployment.bucket_policies[bucket] = Policy(f"the bucket policy of {bucket}",
                                                        values.resolve(props["PolicyDocument"]))
        for logical_id, props in of_type.get("AWS::S3::Bucket", {}).items():
            for rule in props.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", []):
                default = rule.get("ServerSideEncryptionByDefault", {})
                if default.get("SSEAlgorithm") == "aws:kms" and "KMSMasterKeyID" in default:
                    deployment.encryption[values[logical_id]] = values.resolve(default["KMSMasterKeyID"])
                    if rule.get("BucketKeyEnabled"):
                        deployment.bucket_keys.add(values[logical_id])
        for kind, name in (("AWS::SNS::Topic", "{}"), ("AWS::SQS::Queue", "{}.Arn")):
            for logical_id, props in of_type.get(kind, {}).items():
                if "KmsMasterKeyId" in props:
                    deployment.encryption[values[name.format(logical_id)]] = values.resolve(props["KmsMasterKeyId"])
        for logical_id, props in of_type.get("AWS::Lambda::Function", {}).items():
            try:
                name = values[logical_id]
            except asl.UnresolvedReference:
                continue  # CDK's own helper functions (bucket notifications) run at deploy time only
            group = props.get("LoggingConfig", {}).get("LogGroup")
            deployment.functions[name] = Function(values.resolve(group) if group else f"/aws/lambda/{name}",
                                                  props.get("TracingConfig", {}).get("Mode") == "Active")
            deployment.stand_ins |= _stand_ins(values, props.get("Environment", {}).get("Variables", {}),
                                               (local_environments or {}).get(name, {}))
        deployment.traced_state_machines = {
            values[logical_id] for logical_id, props in of_type.get("AWS::StepFunctions::StateMachine", {}).items()
            if props.get("TracingConfiguration", {}).get("Enabled")}
        return deployment

    # --- what AWS does as a principal, given this deployment -----------------------------------------------
    def expand(self, calls: Iterable[Call], events: Iterable[Event]) -> list[Call]:
        """The recorded calls, with what each implies here, and the calls behind each event."""
        out: dict[Call, None] = {}
        for recorded in calls:
            out[recorded] = None
            out.update(dict.fromkeys(self._encryption(recorded)))
        for event in events:
            out.update(dict.fromkeys(getattr(self, f"_{event.kind.replace('-', '_')}")(event)))
        return list(out)

    def _encryption(self, c: Call) -> list[Call]:
        service, operation = c.source.split(" ", 1)[0].partition(".")[::2]
        if service == "s3":
            bucket = c.resource.removeprefix("arn:aws:s3:::").split("/", 1)[0]
            key = self.encryption.get(bucket)
            context = {"kms:EncryptionContext:aws:s3:arn": f"arn:aws:s3:::{bucket}" if bucket in self.bucket_keys
                       else c.resource}
            actions = []
            if c.action in ("s3:GetObject", "s3:GetObjectVersion") and operation in ("GetObject", "CopyObject"):
                actions = ["kms:Decrypt"]
            elif c.action == "s3:PutObject":
                multipart = operation in ("CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")
                actions = ["kms:GenerateDataKey", "kms:Decrypt"] if multipart else ["kms:GenerateDataKey"]
        elif c.action in ("sns:Publish", "sqs:SendMessage"):
            key, actions, context = self.encryption.get(c.resource), ["kms:GenerateDataKey", "kms:Decrypt"], {}
        else:
            return []
        if key is None:
            return []
        return [call(c.principal, action, key, f"{c.source} (SSE-KMS)", **context,
                     **{"kms:ViaService": f"{service}.{REGION}.amazonaws.com", "kms:CallerAccount": ACCOUNT})
                for action in actions]

    def _lambda(self, event: Event) -> list[Call]:
        name = event.detail("function")
        source = f"the Lambda runtime of {name}"
        calls = [_assumed_by(event.principal, "lambda.amazonaws.com", source)]
        function = self.functions.get(name)
        if function is None:
            return [*calls, call(event.principal, f"unmapped:{source}", "*", source)]
        stream = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{function.log_group}:log-stream:{LAMBDA_STREAM}"
        calls += [call(event.principal, action, stream, source) for action in ("logs:CreateLogStream",
                                                                               "logs:PutLogEvents")]
        if function.tracing:
            calls += [call(event.principal, f"xray:{action}", "*", source)
                      for action in ("PutTraceSegments", "PutTelemetryRecords")]
        return calls

    def _container(self, event: Event) -> list[Call]:
        role, image = event.principal, self.stand_ins.get(event.detail("image"), event.detail("image"))
        source = f"a SageMaker container of {image} logging to {event.detail('log_group')}"
        calls = [_assumed_by(role, "sagemaker.amazonaws.com", source),
                 call(role, "ecr:GetAuthorizationToken", "*", source)]
        found = ECR_IMAGE.match(image)
        if found is None:
            calls.append(call(role, f"unmapped:image {image} is not in ECR", "*", source))
        else:
            repository = f"arn:aws:ecr:{found['region']}:{found['account']}:repository/{found['repository']}"
            calls += [call(role, f"ecr:{action}", repository, source)
                      for action in ("BatchCheckLayerAvailability", "GetDownloadUrlForLayer", "BatchGetImage")]
        group = f"arn:aws:logs:{event.detail('region')}:{ACCOUNT}:log-group:{event.detail('log_group')}:log-stream:"
        calls += [*(call(role, action, group, source) for action in ("logs:CreateLogGroup", "logs:DescribeLogStreams")),
                  *(call(role, action, group + event.detail("log_stream"), source)
                    for action in ("logs:CreateLogStream", "logs:PutLogEvents")),
                  call(role, "cloudwatch:PutMetricData", "*", source,
                       **{"cloudwatch:namespace": event.detail("namespace")})]
        return calls

    def _state_machine(self, event: Event) -> list[Call]:
        machine = event.detail("state_machine")
        source = f"the executions of {machine}"
        calls = [_assumed_by(event.principal, "states.amazonaws.com", source,
                             **{"aws:SourceArn": machine, "aws:SourceAccount": ACCOUNT})]
        if machine in self.traced_state_machines:
            calls += [call(event.principal, f"xray:{action}", "*", source)
                      for action in ("PutTraceSegments", "PutTelemetryRecords", "GetSamplingRules",
                                     "GetSamplingTargets")]
        return calls

    # --- the check -----------------------------------------------------------------------------------------
    def check(self, calls: Iterable[Call]) -> list[Denial]:
        """Every call this deployment's policies refuse, with the reason."""
        return [denial for c in calls if (denial := self._denial(c)) is not None]

    def _denial(self, c: Call) -> Denial | None:
        if c.action.startswith("unmapped:"):
            return Denial(c, "the offline cloud cannot say which IAM action this needs (cxr/local/iam_trace.py, "
                             "cxr/local/iam_deployment.py)")
        if c.action == "sts:AssumeRole":  # a service assuming a role: the role's trust policy decides
            role = self.roles.get(c.resource)
            if role is None:
                return Denial(c, "no synthesized role has this ARN")
            decision = evaluate(Request(c.principal, c.action, c.resource, dict(c.context)), [], role.trust,
                                account=ACCOUNT)
            return None if decision.allowed else Denial(c, f"{role.trust.name} does not trust {c.principal}")
        role = self.roles.get(c.principal)
        if role is None:
            return Denial(c, "no synthesized role has this ARN")
        if role.aws_managed:
            raise UnsupportedPolicy(f"{role.logical_id} has AWS managed policies {role.aws_managed}")
        service = c.action.split(":", 1)[0]
        if service == "kms":
            resource_policy = self.key_policies.get(c.resource)
            if resource_policy is None:
                return Denial(c, "not a key of this deployment")
        else:
            bucket = c.resource.removeprefix("arn:aws:s3:::").split("/", 1)[0] if service == "s3" else None
            resource_policy = self.bucket_policies.get(bucket)
        decision = evaluate(Request(c.principal, c.action, c.resource, dict(c.context)), role.policies,
                            resource_policy, account=ACCOUNT, key_policy=service == "kms")
        return None if decision.allowed else Denial(c, decision.reason)

    def without(self, principal: str, action: str) -> Deployment:
        """A copy in which ``principal``'s identity-based policies no longer allow ``action``."""
        changed = copy.copy(self)
        changed.roles = dict(self.roles)
        role = self.roles[principal]
        changed.roles[principal] = Role(role.arn, role.logical_id, role.trust, [
            Policy(p.name, {**p.document, "Statement": without_action(p.statements, action)}) for p in role.policies
        ], role.aws_managed)
        return changed


def _roles(values: LocalValues, of_type: Mapping[str, Mapping[str, Mapping]]) -> dict[str, Role]:
    """Every role by its local ARN, with its inline policies and the policy resources attached to it."""
    roles: dict[str, Role] = {}
    for logical_id, props in of_type.get("AWS::IAM::Role", {}).items():
        managed = [values.resolve(m) for m in props.get("ManagedPolicyArns", [])]
        roles[values[f"{logical_id}.Arn"]] = Role(
            values[f"{logical_id}.Arn"], logical_id,
            Policy(f"{logical_id} trust policy", values.resolve(props["AssumeRolePolicyDocument"])),
            [Policy(f"{logical_id}: {p['PolicyName']}", values.resolve(p["PolicyDocument"]))
             for p in props.get("Policies", [])],
            [m for m in managed if m.startswith("arn:aws:iam::aws:")])
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for logical_id, props in of_type.get(kind, {}).items():
            for role in props.get("Roles", []):
                owner = roles[values[f"{role['Ref']}.Arn"]]
                document = values.resolve(props["PolicyDocument"])
                owner.policies.append(Policy(f"{owner.logical_id}: {logical_id}", document))
    return roles


def _assumed_by(role: str, service: str, source: str, **context: str) -> Call:
    return call(service, "sts:AssumeRole", role, source, **context)


def _stand_ins(values: LocalValues, synthesized: Mapping[str, Any], local: Mapping[str, str]) -> dict[str, str]:
    found = {}
    for name, expression in synthesized.items():
        try:
            value = values.resolve(expression)
        except asl.UnresolvedReference:
            continue
        if name in local and isinstance(value, str) and local[name] != value:
            found[local[name]] = value
    return found


def summary(calls: Iterable[Call]) -> dict[str, int]:
    """Each role (by name) and how many distinct actions the trace needs of it."""
    actions: dict[str, set[str]] = {}
    for c in calls:
        if c.principal.startswith("arn:"):
            actions.setdefault(_short(c.principal), set()).add(c.action)
    return {role: len(used) for role, used in sorted(actions.items())}


def _short(principal: str) -> str:
    return principal.rsplit("/", 1)[-1]


def load(path) -> list[Call]:
    return [Call.from_dict(c) for c in json.loads(path.read_text())["calls"]]


