"""S3 buckets with the security baseline: KMS, versioning, SSL only, no public access, access logs."""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra import wiring

from .nag import acknowledge


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
) -> s3.Bucket:
    """A data-holding bucket: kept on stack deletion (``cxr teardown`` reports it) so nothing is lost."""
    construct_id = wiring.BUCKETS[role].construct_id
    bucket = s3.Bucket(
        scope,
        construct_id,
        bucket_name=bucket_name(role, stage),
        encryption=s3.BucketEncryption.KMS,
        encryption_key=key,
        bucket_key_enabled=True,
        versioned=True,
        enforce_ssl=True,
        minimum_tls_version=1.2,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        server_access_logs_bucket=access_logs,
        server_access_logs_prefix=f"{construct_id}/",
        lifecycle_rules=[
            s3.LifecycleRule(id="ExpireOldVersions", noncurrent_version_expiration=Duration.days(90),
                             abort_incomplete_multipart_upload_after=Duration.days(7)),
            *lifecycle_rules,
        ],
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
        minimum_tls_version=1.2,
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
