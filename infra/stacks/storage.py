"""Storage: the customer-managed key, the data / inference / access-log buckets, source-state table, topic.

The key and the buckets are retained when the stack is deleted (data is never lost with a
teardown). A later deployment adopts them (``adopt_key_arn`` / ``adopt_buckets``, which `cxr deploy`
sets from what it finds in the account): they are referenced by ARN and derived name, never created
again (CloudFormation refuses a bucket name that exists), and what the deleted stack owned beside
them (bucket policies, the key's alias) is created again. Other stacks grant the key's use in
their roles' identity policies, which the key policy's account statement lets IAM decide, so an
adopted key needs no policy change for new roles.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from infra import wiring
from infra.components.buckets import (
    access_log_bucket,
    acknowledge_imported_log_target,
    adopted_bucket,
    allow_log_delivery,
    secure_bucket,
)
from infra.components.nag import acknowledge
from infra.components.tables import table
from infra.config import Config
from lambdas.domain import layout

REVIEW_COPIES_CORS = [s3.CorsRule(allowed_methods=[s3.HttpMethods.GET], allowed_origins=["*"], max_age=300)]
"""The review page draws each X-ray on a canvas and reads its pixels (window/level), which a browser allows only
for a CORS response. ``*`` and GET only: a presigned URL is the credential (five minutes, one object), CORS
decides only which pages may read a response their holder could fetch anyway, and no credentials are sent. The
page's own origin is not named because it is created after this bucket, in the review stack."""


def key_alias(stage: str) -> str:
    return f"alias/cxr-{stage}"


class StorageStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: Config, **kwargs):
        super().__init__(scope, construct_id, **kwargs)
        stage, adopted = config.stage, set(config.adopt_buckets)
        if config.adopt_key_arn:
            self.key: kms.IKey = kms.Key.from_key_arn(self, "Key", config.adopt_key_arn)
            kms.Alias(self, "KeyAlias", alias_name=key_alias(stage), target_key=self.key)
        else:
            self.key = kms.Key(
                self, "Key", enable_key_rotation=True, alias=key_alias(stage),
                description="cxr: data, inference, logs, queues, tables, training volumes and endpoints",
                removal_policy=RemovalPolicy.RETAIN,
            )
            self._allow_services(self.key)
        logs_policy = None
        if wiring.ACCESS_LOGS in adopted:
            self.access_logs, logs_policy = adopted_bucket(self, wiring.ACCESS_LOGS, stage)
        else:
            self.access_logs = access_log_bucket(self, stage, retention_days=config.log_retention_days)
        lifecycle = {wiring.DATA: [
            s3.LifecycleRule(id="ExpireQuarantine", prefix=layout.QUARANTINE,
                             expiration=Duration.days(config.quarantine_expiry_days)),
            s3.LifecycleRule(id="ExpireCheckpoints", prefix=layout.CHECKPOINTS,
                             expiration=Duration.days(config.checkpoint_expiry_days),
                             noncurrent_version_expiration=Duration.days(1)),
        ], wiring.INFERENCE: [  # an asynchronous request's copies serve it once; the prediction record stays
            s3.LifecycleRule(id=f"Expire{''.join(part.title() for part in prefix.strip('/').split('-'))}",
                             prefix=prefix, expiration=Duration.days(config.async_expiry_days),
                             noncurrent_version_expiration=Duration.days(1))
            for prefix in (layout.ASYNC_INPUT, layout.ASYNC_REQUESTS, layout.ASYNC_OUTPUT)
        ] + [s3.LifecycleRule(id="ExpireReviewCopies", prefix=layout.REVIEW, expiration=Duration.days(1),
                              noncurrent_version_expiration=Duration.days(1))]}  # made again on the next view
        buckets = {}
        for role, rules in lifecycle.items():
            if role in adopted:
                buckets[role], _ = adopted_bucket(self, role, stage)
            else:
                buckets[role] = secure_bucket(self, role, stage, key=self.key, access_logs=self.access_logs,
                                              lifecycle_rules=rules, object_lock=role == wiring.PREDICTIONS_BUCKET,
                                              cors=REVIEW_COPIES_CORS if role == wiring.INFERENCE else None)
                if logs_policy is not None:
                    acknowledge_imported_log_target(buckets[role])
            if adopted & {role, wiring.ACCESS_LOGS}:  # CDK writes log delivery only between two buckets of its own
                allow_log_delivery(self.access_logs, logs_policy, role, stage)
        self.data, self.inference = buckets[wiring.DATA], buckets[wiring.INFERENCE]
        # one current outcome per source key of both buckets (lambdas.domain.source_state); derived from the
        # buckets, so it goes with the stack and `cxr fsck --repair` rebuilds it over retained buckets
        self.source_state = table(self, wiring.SOURCE_STATE_TABLE, key=self.key, removal=RemovalPolicy.DESTROY)
        self.pseudonym_secret = self._pseudonym_secret(config)
        self.topic = sns.Topic(self, "Notifications", master_key=self.key, enforce_ssl=True,
                               display_name=f"cxr {config.stage}")
        if config.notification_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(config.notification_email))

    def _pseudonym_secret(self, config: Config) -> secretsmanager.ISecret:
        """The HMAC key of DICOM pseudonyms (``lambdas/domain/deid.py``): retained, never rotated.

        A teardown keeps it with the key and the buckets, so patients keep their pseudonyms across
        deployments; `cxr deploy` finds a retained one and sets ``adopt_pseudonym_secret`` to adopt it by name.
        """
        name = wiring.PSEUDONYM_SECRET_NAME.format(stage=config.stage)
        if config.adopt_pseudonym_secret:
            return secretsmanager.Secret.from_secret_name_v2(self, "PseudonymKey", name)
        secret = secretsmanager.Secret(
            self, "PseudonymKey", secret_name=name, encryption_key=self.key, removal_policy=RemovalPolicy.RETAIN,
            description="cxr: HMAC key of DICOM patient and UID pseudonyms; never rotate (pseudonyms would change)",
            generate_secret_string=secretsmanager.SecretStringGenerator(password_length=64, exclude_punctuation=True))
        acknowledge(secret, "a pseudonym key is never rotated: a new key gives every patient a new pseudonym and "
                            "splits one patient's images across training splits", "AwsSolutions-SMG4",
                    "HIPAA.Security-SecretsManagerRotationEnabled")
        return secret

    def _allow_services(self, key: kms.Key) -> None:
        """Services that encrypt with the key on the account's behalf: log groups and alarm notifications.

        An adopted key keeps the statements it was created with (``wiring.KEY_SERVICE_STATEMENTS``);
        `cxr deploy` checks they are there, since no stack can write a key policy it does not own.
        """
        logs_sid, alarms_sid = wiring.KEY_SERVICE_STATEMENTS
        key.add_to_resource_policy(iam.PolicyStatement(
            sid=logs_sid,
            principals=[iam.ServicePrincipal(f"logs.{self.region}.amazonaws.com")],
            actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            resources=["*"],  # in a key policy, "*" is this key
            conditions={"ArnLike": {"kms:EncryptionContext:aws:logs:arn":
                                    f"arn:{self.partition}:logs:{self.region}:{self.account}:log-group:*"}},
        ))
        key.add_to_resource_policy(iam.PolicyStatement(
            sid=alarms_sid,
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            actions=["kms:Decrypt", "kms:GenerateDataKey*"],
            resources=["*"],
            conditions={"StringEquals": {"aws:SourceAccount": self.account}},
        ))
