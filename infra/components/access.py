"""Least-privilege object access: explicit actions on key prefixes (from ``layout``), never bucket-wide wildcards."""

from __future__ import annotations

from collections.abc import Iterable

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms

from .buckets import bucket_arn, nag_bucket_arn
from .nag import acknowledge


def allow_objects(
    principal: iam.IGrantable,
    bucket: str,
    stage: str,
    key: kms.IKey,
    *,
    read: Iterable[str] = (),
    write: Iterable[str] = (),
    list_: Iterable[str] = (),
    tombstone: Iterable[str] = (),
) -> None:
    """Read (any version), write, list and tombstone objects of a bucket role under prefixes, with the key uses
    that implies. Tombstoning is ``s3:DeleteObject`` without ``s3:DeleteObjectVersion``: a delete marker on a
    versioned bucket, every version kept."""
    read, write, list_, tombstone = list(read), list(write), list(list_), list(tombstone)
    arn = bucket_arn(bucket, stage)
    role = principal.grant_principal
    if read:
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:GetObject", "s3:GetObjectVersion"], resources=[f"{arn}/{prefix}*" for prefix in read]))
    if write:
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:PutObject"], resources=[f"{arn}/{prefix}*" for prefix in write]))
    if tombstone:
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:DeleteObject"], resources=[f"{arn}/{prefix}*" for prefix in tombstone]))
    if list_:
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:ListBucket"], resources=[arn],
            conditions={"StringLike": {"s3:prefix": [f"{prefix}*" for prefix in list_]}}))
    key_actions = {"kms:Decrypt"} if read or list_ or write else set()
    if write:
        key_actions.add("kms:GenerateDataKey")
    if key_actions:
        role.add_to_principal_policy(iam.PolicyStatement(actions=sorted(key_actions), resources=[key.key_arn]))
    acknowledge(role, "Object access is scoped to the key prefixes of infra.wiring / lambdas.domain.layout; object "
                "names under a prefix are data (dataset, label, content hash), so they cannot be listed in a policy.",
                *(f"AwsSolutions-IAM5[Resource::{nag_bucket_arn(bucket, stage)}/{prefix}*]"
                  for prefix in sorted(set(read + write + tombstone))))


def allow_retention(principal: iam.IGrantable, bucket: str, stage: str, prefixes: Iterable[str]) -> None:
    """Set Object Lock retention on objects written under ``prefixes``: AWS checks ``s3:PutObjectRetention`` for a
    PutObject that carries ``x-amz-object-lock-*`` headers, besides ``s3:PutObject`` (S3 API reference, PutObject,
    "Permissions"). Never ``s3:BypassGovernanceRetention``: no function may shorten or lift a lock."""
    arn = bucket_arn(bucket, stage)
    principal.grant_principal.add_to_principal_policy(iam.PolicyStatement(
        actions=["s3:PutObjectRetention"], resources=[f"{arn}/{prefix}*" for prefix in prefixes]))


def allow_secret(principal: iam.IGrantable, scope: Stack, name: str) -> None:
    """Read the secret named ``name`` (by name, as the stacks reference the retained pseudonym key); kms:Decrypt on
    its key comes with the principal's object access. Secrets Manager appends six random characters to a secret's
    ARN, hence the wildcard (its IAM user guide, "Resource: use wildcards in secret ARNs")."""
    arn = scope.format_arn(service="secretsmanager", resource="secret", resource_name=f"{name}-??????",
                           arn_format=ArnFormat.COLON_RESOURCE_NAME)
    principal.grant_principal.add_to_principal_policy(iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"],
                                                                          resources=[arn]))
