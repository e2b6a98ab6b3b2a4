"""DynamoDB tables from ``infra.wiring``: on demand, KMS CMK, point-in-time recovery."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from infra import wiring

from .nag import acknowledge


def table(scope: Construct, spec: wiring.Table, *, key: kms.IKey, removal: RemovalPolicy) -> dynamodb.Table:
    created = dynamodb.Table(
        scope,
        spec.id,
        partition_key=dynamodb.Attribute(name=spec.partition_key, type=dynamodb.AttributeType.STRING),
        sort_key=(dynamodb.Attribute(name=spec.sort_key, type=dynamodb.AttributeType.STRING)
                  if spec.sort_key else None),
        time_to_live_attribute=spec.ttl_attribute,
        billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
        encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
        encryption_key=key,
        point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
            point_in_time_recovery_enabled=True),
        removal_policy=removal,
    )
    for index in spec.indexes:
        created.add_global_secondary_index(
            index_name=index.name,
            partition_key=dynamodb.Attribute(name=index.partition_key, type=dynamodb.AttributeType.STRING),
            sort_key=(dynamodb.Attribute(name=index.sort_key, type=dynamodb.AttributeType.STRING)
                      if index.sort_key else None),
            projection_type=dynamodb.ProjectionType.ALL,
        )
    acknowledge(created, "Point-in-time recovery gives continuous backups for 35 days; an AWS Backup plan on top "
                "is an organisation-level choice this stack does not impose.", "HIPAA.Security-DynamoDBInBackupPlan")
    return created


WRITES = frozenset({"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"})


def allow_items(principal: iam.IGrantable, table: dynamodb.ITable, key: kms.IKey, *actions: str) -> None:
    """Item actions on a table, with the uses of its customer-managed key they imply (made through DynamoDB)."""
    role = principal.grant_principal
    role.add_to_principal_policy(iam.PolicyStatement(actions=list(actions), resources=[table.table_arn]))
    key_actions = ["kms:Decrypt", "kms:DescribeKey"] + (["kms:Encrypt", "kms:GenerateDataKey"]
                                                        if WRITES & set(actions) else [])
    role.add_to_principal_policy(iam.PolicyStatement(actions=key_actions, resources=[key.key_arn]))
