"""Storage: the customer-managed key, the data / inference / access-log buckets, source-state table, topic."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from infra import wiring
from infra.components.buckets import access_log_bucket, secure_bucket
from infra.components.tables import table
from infra.config import Config
from lambdas.domain import layout


class StorageStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: Config, **kwargs):
        super().__init__(scope, construct_id, **kwargs)
        self.key = kms.Key(
            self, "Key", enable_key_rotation=True, alias=f"alias/cxr-{config.stage}",
            description="cxr: data, inference, logs, queues, tables, training volumes and endpoints",
            removal_policy=RemovalPolicy.RETAIN,
        )
        self._allow_services(self.key)
        self.access_logs = access_log_bucket(self, config.stage, retention_days=config.log_retention_days)
        self.data = secure_bucket(
            self, wiring.DATA, config.stage, key=self.key, access_logs=self.access_logs,
            lifecycle_rules=[
                s3.LifecycleRule(id="ExpireQuarantine", prefix=layout.QUARANTINE,
                                 expiration=Duration.days(config.quarantine_expiry_days)),
                s3.LifecycleRule(id="ExpireCheckpoints", prefix=layout.CHECKPOINTS,
                                 expiration=Duration.days(config.checkpoint_expiry_days),
                                 noncurrent_version_expiration=Duration.days(1)),
            ],
        )
        self.inference = secure_bucket(self, wiring.INFERENCE, config.stage, key=self.key,
                                       access_logs=self.access_logs)
        # one current outcome per source key of both buckets (lambdas.domain.source_state); derived from the
        # buckets, so it goes with the stack and `cxr fsck --repair` rebuilds it over retained buckets
        self.source_state = table(self, wiring.SOURCE_STATE_TABLE, key=self.key, removal=RemovalPolicy.DESTROY)
        self.topic = sns.Topic(self, "Notifications", master_key=self.key, enforce_ssl=True,
                               display_name=f"cxr {config.stage}")
        if config.notification_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(config.notification_email))

    def _allow_services(self, key: kms.Key) -> None:
        """Services that encrypt with the key on the account's behalf: log groups and alarm notifications."""
        key.add_to_resource_policy(iam.PolicyStatement(
            sid="CloudWatchLogs",
            principals=[iam.ServicePrincipal(f"logs.{self.region}.amazonaws.com")],
            actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            resources=["*"],  # in a key policy, "*" is this key
            conditions={"ArnLike": {"kms:EncryptionContext:aws:logs:arn":
                                    f"arn:{self.partition}:logs:{self.region}:{self.account}:log-group:*"}},
        ))
        key.add_to_resource_policy(iam.PolicyStatement(
            sid="CloudWatchAlarms",
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            actions=["kms:Decrypt", "kms:GenerateDataKey*"],
            resources=["*"],
            conditions={"StringEquals": {"aws:SourceAccount": self.account}},
        ))
