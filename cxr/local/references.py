"""The offline cloud's value for each reference of the synthesized templates.

``Ref`` and ``Fn::GetAtt`` on a resource of the CDK app resolve to the name or ARN the offline
cloud gives the same resource (:class:`cxr.local.names.LocalNames`, which CloudFormation would
generate in an account), so the state machine's definition and the roles' policies can be read
as the offline cloud runs them (:func:`infra.asl.resolve`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from cxr.local.names import ACCOUNT, REGION, LocalNames
from infra import asl, wiring

PSEUDO = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}


def construct_ids(resource: Mapping[str, Any]) -> list[str]:
    """The construct path below the stack, without CDK's trailing ``Resource`` (``["Preprocess", "Role"]``)."""
    parts = resource.get("Metadata", {}).get("aws:cdk:path", "").split("/")[1:]
    return parts[:-1] if parts and parts[-1] == "Resource" else parts


class LocalValues(Mapping[str, Any]):
    """Value names (``LogicalId`` for ``Ref``, ``LogicalId.Attribute`` for ``Fn::GetAtt``, pseudo parameters)
    -> the offline cloud's value; an unknown one raises :class:`infra.asl.UnresolvedReference`."""

    def __init__(self, templates: list[Mapping], names: LocalNames, kms_key_arn: str):
        self.templates, self.names, self.kms_key_arn = templates, names, kms_key_arn
        self.resources = {lid: r for t in templates for lid, r in t.get("Resources", {}).items()}

    def __getitem__(self, name: str) -> Any:
        if name in PSEUDO:
            return PSEUDO[name]
        logical_id, _, attribute = name.partition(".")
        if logical_id not in self.resources:
            raise asl.UnresolvedReference(name)
        value = self._value(self.resources[logical_id], attribute or None)
        if value is None:
            raise asl.UnresolvedReference(f"the offline cloud has no stand-in for {name} "
                                          f"({self.resources[logical_id]['Type']})")
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.resources)

    def __len__(self) -> int:
        return len(self.resources)

    def resolve(self, expression: Any) -> Any:
        return asl.resolve(expression, self, self.templates)

    def _value(self, resource: Mapping[str, Any], attribute: str | None) -> Any:
        kind, ids, names = resource["Type"], construct_ids(resource), self.names
        properties = resource.get("Properties", {})
        if kind == "AWS::IAM::Role":
            arn = names.role_arn(*ids)
            return arn if attribute == "Arn" else arn.rsplit("/", 1)[1]
        if kind == "AWS::Lambda::Function" and (function := _function(ids)):
            return names.function_arn(function) if attribute == "Arn" else names.function(function)
        if kind == "AWS::KMS::Key":
            return self.kms_key_arn if attribute == "Arn" else self.kms_key_arn.rsplit("/", 1)[1]
        if kind == "AWS::SNS::Topic":
            return names.topic if attribute == "TopicName" else names.topic_arn
        if kind == "AWS::SQS::Queue" and (function := _function(ids)):  # the functions' dead-letter queues
            name = names.dead_letter_queue(function)
            return {"Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}", "QueueName": name,
                    None: f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}"}.get(attribute)
        if kind == "AWS::Logs::LogGroup":
            name = names.generated(*ids)
            return f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{name}:*" if attribute == "Arn" else name
        if kind == "AWS::DynamoDB::Table":
            name = names.table(wiring.TABLES[ids[0]])
            return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}" if attribute == "Arn" else name
        if kind == "AWS::SSM::Parameter" and attribute is None:
            return self.resolve(properties["Name"])
        if kind == "AWS::S3::Bucket":  # a bucket without a fixed name (the review page's) gets a generated one
            name = self.resolve(properties["BucketName"]) if "BucketName" in properties else names.generated(*ids)
            return f"arn:aws:s3:::{name}" if attribute == "Arn" else name
        if kind == "AWS::CloudFront::Distribution":  # the review page's (its bucket policy names it)
            return f"{names.generated(*ids)}.cloudfront.net" if attribute == "DomainName" else names.generated(*ids)
        if kind == "AWS::StepFunctions::StateMachine":
            return f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{names.state_machine}"
        return None


def _function(ids: list[str]) -> wiring.Function | None:
    """The function of ``infra.wiring`` a construct belongs to (None for CDK's own helper functions)."""
    found = [f for f in wiring.FUNCTIONS.values() if f.id in ids]
    return found[0] if len(found) == 1 else None
