"""S3 buckets with the security baseline: KMS, versioning, SSL only, no public access, access logs."""

from __future__ import annotations

from aws_cdk import Annotations, Aws, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra import wiring

from .nag import acknowledge

MINIMUM_TLS_VERSION = 1.2


def bucket_name(role: str, stage: str) -> str:
    """Resolved at deploy time from the account and region: any stack can name the bucket without an export."""
    return wiring.BUCKETS[role].name(stage, Aws.ACCOUNT_ID, Aws.REGION)


def bucket_arn(role: str, stage: str) -> str:
    return f"arn:{Aws.PARTITION}:s3:::{bucket_name(role, stage)}"


def nag_bucket_arn(role: str, stage: str) -> str:
    """The same ARN as cdk-nag prints it in a finding's id."""
    return wiring.BUCKETS[role].name(stage, "<AWS::AccountId>", "<AWS::Region>").join(
        ("arn:<AWS::Partition>:s3:::", ""))


def imported_bucket(scope: Construct, role: str, stage: str) -> s3.IBucket:
    """A bucket of the storage stack, referenced by its derived name."""
    return s3.Bucket.from_bucket_attributes(scope, wiring.BUCKETS[role].construct_id,
                                            bucket_name=bucket_name(role, stage), bucket_arn=bucket_arn(role, stage))


def secure_bucket(
    scope: Construct,
    role: str,
    stage: str,
    *,
    key: kms.IKey,
    access_logs: s3.IBucket,
    lifecycle_rules: list[s3.LifecycleRule] = (),
    object_lock: bool = False,
    cors: list[s3.CorsRule] | None = None,
) -> s3.Bucket:
    """A data-holding bucket: kept on stack deletion (``cxr teardown`` reports it) so nothing is lost.

    ``object_lock``: S3 Object Lock enabled, with no bucket-wide default retention, so only objects written
    with a retention period of their own (prediction JSON) are locked and everything else stays deletable.
    """
    construct_id = wiring.BUCKETS[role].construct_id
    bucket = s3.Bucket(
        scope,
        construct_id,
        bucket_name=bucket_name(role, stage),
        encryption=s3.BucketEncryption.KMS,
        encryption_key=key,
        bucket_key_enabled=True,
        versioned=True,
        object_lock_enabled=object_lock or None,
        enforce_ssl=True,
        minimum_tls_version=MINIMUM_TLS_VERSION,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        server_access_logs_bucket=access_logs,
        server_access_logs_prefix=f"{construct_id}/",
        lifecycle_rules=[
            s3.LifecycleRule(id="ExpireOldVersions", noncurrent_version_expiration=Duration.days(90),
                             abort_incomplete_multipart_upload_after=Duration.days(7)),
            *lifecycle_rules,
        ],
        cors=cors,
        removal_policy=RemovalPolicy.RETAIN,
    )
    acknowledge(bucket, "Cross-region replication doubles storage cost and needs a second region the user chooses; "
                "versioning and retention on deletion protect the data in this region.",
                "HIPAA.Security-S3BucketReplicationEnabled")
    return bucket


def access_log_bucket(scope: Construct, stage: str, *, retention_days: int) -> s3.Bucket:
    """Server access logs: S3's log delivery cannot write to KMS-encrypted buckets, so SSE-S3 here."""
    bucket = s3.Bucket(
        scope,
        wiring.BUCKETS[wiring.ACCESS_LOGS].construct_id,
        bucket_name=bucket_name(wiring.ACCESS_LOGS, stage),
        encryption=s3.BucketEncryption.S3_MANAGED,
        versioned=True,
        enforce_ssl=True,
        minimum_tls_version=MINIMUM_TLS_VERSION,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        lifecycle_rules=[s3.LifecycleRule(id="ExpireLogs", expiration=Duration.days(retention_days),
                                          noncurrent_version_expiration=Duration.days(30))],
        removal_policy=RemovalPolicy.RETAIN,
    )
    acknowledge(bucket, "S3 server access log delivery supports only SSE-S3 on the target bucket.",
                "HIPAA.Security-S3DefaultEncryptionKMS")
    acknowledge(bucket, "Logs are rebuilt by S3 itself; replicating them to a second region adds cost, not safety.",
                "HIPAA.Security-S3BucketReplicationEnabled")
    return bucket



def adopted_bucket(scope: Construct, role: str, stage: str) -> tuple[s3.IBucket, s3.BucketPolicy]:
    """A bucket an earlier teardown retained (data kept), referenced by its derived name instead of created.

    Its configuration (encryption, versioning, lifecycle, access logs, public access block) stayed
    with it; its policy was a resource of the deleted stack and went with it, so the statements
    :func:`secure_bucket` gets from CDK (SSL only, TLS 1.2 or later) are written here again. The
    policy is returned so that log delivery can be allowed into it (:func:`allow_log_delivery`).
    """
    bucket = imported_bucket(scope, role, stage)
    policy = s3.BucketPolicy(scope, f"{wiring.BUCKETS[role].construct_id}Policy", bucket=bucket)
    objects = [bucket.bucket_arn, bucket.arn_for_objects("*")]
    policy.document.add_statements(
        iam.PolicyStatement(effect=iam.Effect.DENY, principals=[iam.AnyPrincipal()], actions=["s3:*"],
                            resources=objects, conditions={"Bool": {"aws:SecureTransport": "false"}}),
        iam.PolicyStatement(effect=iam.Effect.DENY, principals=[iam.AnyPrincipal()], actions=["s3:*"],
                            resources=objects,
                            conditions={"NumericLessThan": {"s3:TlsVersion": MINIMUM_TLS_VERSION}}),
    )
    acknowledge(policy, "The first statement denies every request without TLS to the bucket and its objects; "
                "cdk-nag matches a policy to its bucket only through a Ref, and this bucket is referenced by its "
                "derived name (tests/infra/test_adopt.py checks the statement).",
                "AwsSolutions-S10", "HIPAA.Security-S3BucketSSLRequestsOnly")
    return bucket, policy


def allow_log_delivery(access_logs: s3.IBucket, policy: s3.BucketPolicy | None, source_role: str,
                       stage: str) -> None:
    """What CDK writes for a bucket it creates with ``server_access_logs_bucket`` when either side is adopted
    (CDK can add it only when both are its own): S3 log delivery may put the source's logs under its prefix.

    ``policy`` is the adopted access-log bucket's (:func:`adopted_bucket`); None when that bucket is created
    here and keeps its own policy.
    """
    source = wiring.BUCKETS[source_role].construct_id
    statement = iam.PolicyStatement(
        principals=[iam.ServicePrincipal("logging.s3.amazonaws.com")], actions=["s3:PutObject"],
        resources=[access_logs.arn_for_objects(f"{source}/*")],
        conditions={"ArnLike": {"aws:SourceArn": bucket_arn(source_role, stage)},
                    "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}})
    if policy is not None:
        policy.document.add_statements(statement)
        return
    access_logs.add_to_resource_policy(statement)
    acknowledge(access_logs, "This is the server access log target of the adopted buckets (cdk-nag sees only buckets "
                "the stack creates); a log bucket logging into itself would loop.",
                "AwsSolutions-S1", "HIPAA.Security-S3BucketLoggingEnabled")


def acknowledge_imported_log_target(bucket: s3.IBucket) -> None:
    """CDK warns that it cannot write log delivery into an imported target's policy; :func:`allow_log_delivery` does."""
    Annotations.of(bucket).acknowledge_warning(
        "@aws-cdk/aws-s3:accessLogsPolicyNotAdded",
        "the adopted access-log bucket's policy is written by infra.components.buckets.allow_log_delivery")
