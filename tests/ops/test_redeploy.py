"""Deploy, `cxr teardown` (data kept), deploy again, twice: the retained buckets and key are found and adopted.

The storage stack is the one the CDK app synthesizes, created and deleted through moto's CloudFormation,
which keeps ``DeletionPolicy: Retain`` resources on deletion as AWS does (and deletes the key's alias,
which has none). moto would also "create" a bucket whose name exists; AWS refuses that, which is why an
adopting template must create no bucket (asserted here and, for the whole app, in tests/infra/test_adopt.py).
"""

from __future__ import annotations

import json
import subprocess

import boto3
import pytest

from cxr import deployment
from cxr.cli import main
from cxr.commands import deploy, teardown
from cxr.errors import UserError
from cxr.target import Target
from infra import asl, wiring
from infra.config import Config

STAGE = "dev"
ACCOUNT, REGION = "123456789012", "us-east-1"
PSEUDO = {"AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::Partition": "aws"}
PLACEHOLDER_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/00000000-0000-0000-0000-000000000000"
STORAGE = wiring.stack_name(STAGE, "Storage")
ALL_ROLES = ",".join(sorted(wiring.BUCKETS))


@pytest.fixture(scope="module")
def templates(module_dir):
    """The storage stack as `cxr deploy` synthesizes it: (normal, adopting every bucket and ``PLACEHOLDER_KEY``)."""
    from infra.app import make_app
    from infra.stacks.storage import StorageStack

    app = make_app(outdir=str(module_dir("cdk.out")))
    adopting = Config.from_values({"stage": STAGE, "adopt_buckets": ALL_ROLES, "adopt_key_arn": PLACEHOLDER_KEY,
                                   "adopt_pseudonym_secret": "true"})
    stacks = [StorageStack(app, id_, stack_name=STORAGE, config=config)
              for id_, config in (("Normal", Config(stage=STAGE)), ("Adopting", adopting))]
    assembly = app.synth()
    bodies = []
    for stack in stacks:
        template = assembly.get_stack_artifact(stack.artifact_id).template
        for resource in template["Resources"].values():
            if resource["Type"] == "AWS::KMS::Key":  # moto 5.2.5 keeps a template's KeyPolicy object unserialised
                resource["Properties"]["KeyPolicy"] = json.dumps(asl.resolve(resource["Properties"]["KeyPolicy"],
                                                                             PSEUDO))
        bodies.append(json.dumps(template))
    return tuple(bodies)


@pytest.fixture
def tgt(aws):
    boto3.client("ssm").put_parameter(Name=deploy.BOOTSTRAP_PARAMETER, Value="30", Type="String")
    return Target(session=boto3.Session(region_name=REGION), stage=STAGE, account=ACCOUNT, region=REGION)


def stack_types(name: str) -> dict[str, str]:
    resources = boto3.client("cloudformation").list_stack_resources(StackName=name)["StackResourceSummaries"]
    return {r["ResourceType"]: r["PhysicalResourceId"] for r in resources}


def cxr_teardown(tgt: Target) -> teardown.Report:
    """`cxr teardown` without --delete-data, moto's stack deletion standing in for `cdk destroy`."""
    def destroy() -> int:
        boto3.client("cloudformation").delete_stack(StackName=STORAGE)
        return 0

    return teardown.teardown(tgt, delete_data=False, destroy=destroy, wait_s=0)


def alias_target() -> str | None:
    aliases = boto3.client("kms").list_aliases()["Aliases"]
    return next((a.get("TargetKeyId") for a in aliases if a["AliasName"] == f"alias/cxr-{STAGE}"), None)


@pytest.mark.slow
def test_teardown_then_deploy_adopts_the_retained_buckets_and_key_cycle_after_cycle(tgt, templates, monkeypatch,
                                                                                      capsys):
    normal, adopting = templates
    cloudformation, s3, kms = boto3.client("cloudformation"), boto3.client("s3"), boto3.client("kms")
    cloudformation.create_stack(StackName=STORAGE, TemplateBody=normal)
    key_arn = kms.describe_key(KeyId=stack_types(STORAGE)["AWS::KMS::Key"])["KeyMetadata"]["Arn"]
    data = tgt.bucket(wiring.DATA)
    s3.put_object(Bucket=data, Key="raw/ds/NORMAL/IM-0001-0001.jpeg", Body=b"x-ray")
    assert deployment.retained_resources(tgt) == []  # deployed: the stack owns them

    report = cxr_teardown(tgt)
    assert report.ok and {leftover.name for leftover in report.kept} >= {tgt.bucket(r) for r in wiring.BUCKETS}
    # the pseudonym secret, as the stack leaves it on AWS (DeletionPolicy Retain); moto's CloudFormation makes none
    boto3.client("secretsmanager").create_secret(Name=wiring.PSEUDONYM_SECRET_NAME.format(stage=STAGE),
                                                 SecretString="k" * 64)
    retained = deployment.retained_resources(tgt)
    assert [(r.kind, r.name, r.role, r.problem) for r in retained] == [
        *((deployment.BUCKET, tgt.bucket(role), role, "") for role in wiring.BUCKETS),
        (deployment.KEY, key_arn, "", ""),
        (deployment.SECRET, wiring.PSEUDONYM_SECRET_NAME.format(stage=STAGE), "", ""),  # patients keep pseudonyms
    ]
    assert alias_target() is None  # the alias was the stack's: gone, so the key is found through its buckets
    assert deployment.adopt_overrides(retained) == {"adopt_buckets": ALL_ROLES, "adopt_key_arn": key_arn,
                                                    "adopt_pseudonym_secret": "true"}

    runs = []
    monkeypatch.setattr(deployment.subprocess, "run", lambda command, cwd, env, check: runs.append(command) or
                        subprocess.CompletedProcess(command, 0))
    assert main(["deploy"]) == 0
    assert runs == [[*deployment.deploy_command({"stage": STAGE, "adopt_buckets": ALL_ROLES,
                                                 "adopt_key_arn": key_arn, "adopt_pseudonym_secret": "true"})]]
    out = capsys.readouterr().out
    for role in wiring.BUCKETS:
        assert f"re-adopting the bucket {tgt.bucket(role)}, retained by an earlier teardown" in out
    assert f"re-adopting the key {key_arn}" in out and "re-adopted from an earlier teardown" in out

    for cycle in (1, 2):  # what `cdk deploy` does with that context, then the next teardown, twice
        cloudformation.create_stack(StackName=STORAGE, TemplateBody=adopting.replace(PLACEHOLDER_KEY, key_arn))
        created = stack_types(STORAGE)
        assert "AWS::S3::Bucket" not in created and "AWS::KMS::Key" not in created
        assert "AWS::SecretsManager::Secret" not in created
        assert alias_target() in (key_arn, key_arn.split("/")[1])  # the alias is back, on the old key
        assert s3.get_object(Bucket=data, Key="raw/ds/NORMAL/IM-0001-0001.jpeg")["Body"].read() == b"x-ray"
        assert deployment.retained_resources(tgt) == retained, cycle  # adopted, still outside the stack
        assert cxr_teardown(tgt).ok
        assert deployment.retained_resources(tgt) == retained, cycle
        assert kms.describe_key(KeyId=key_arn)["KeyMetadata"]["KeyState"] == "Enabled"


def bucket_with_key(tgt: Target, key_arn: str) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=tgt.bucket(wiring.DATA))
    s3.put_bucket_encryption(Bucket=tgt.bucket(wiring.DATA), ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn}}]})


def stack_key_policy(services: bool = True) -> str:
    statements = [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*",
                   "Resource": "*"}]
    statements += [{"Sid": sid, "Effect": "Allow", "Principal": {"Service": "cloudwatch.amazonaws.com"},
                    "Action": "kms:Decrypt", "Resource": "*"} for sid in wiring.KEY_SERVICE_STATEMENTS if services]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


@pytest.mark.parametrize(("breakage", "message"), [
    ("pending deletion", "scheduled for deletion: run `aws kms cancel-key-deletion --key-id"),
    ("disabled", "Disabled: run `aws kms enable-key"),
    ("no account statement", "does not give account 123456789012 the key"),
    ("no service statements", "lacks the statements CloudWatchAlarms, CloudWatchLogs"),
    ("sse-s3 bucket", "its default encryption is AES256, not SSE-KMS"),
])
def test_what_a_deployment_cannot_adopt_fails_before_cdk_runs_naming_the_way_out(tgt, breakage, message):
    kms = boto3.client("kms")
    key = kms.create_key(Policy=stack_key_policy(services=breakage != "no service statements"))["KeyMetadata"]
    bucket_with_key(tgt, key["Arn"])
    if breakage == "pending deletion":
        kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    elif breakage == "disabled":
        kms.disable_key(KeyId=key["KeyId"])
    elif breakage == "no account statement":
        kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=json.dumps({"Statement": [
            {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/admin"}, "Action": "kms:*",
             "Resource": "*"}]}))
    elif breakage == "sse-s3 bucket":
        boto3.client("s3").put_bucket_encryption(Bucket=tgt.bucket(wiring.DATA), ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    with pytest.raises(UserError, match="cannot adopt what an earlier teardown retained") as caught:
        deployment.adopt_overrides(deployment.retained_resources(tgt))
    assert message in str(caught.value)


def test_a_retained_data_bucket_and_a_recreated_access_log_bucket_adopt_only_what_is_there(tgt):
    key_arn = boto3.client("kms").create_key(Policy=stack_key_policy())["KeyMetadata"]["Arn"]
    bucket_with_key(tgt, key_arn)
    assert deployment.adopt_overrides(deployment.retained_resources(tgt)) == {
        "adopt_buckets": wiring.DATA, "adopt_key_arn": key_arn}


def test_an_adopted_predictions_bucket_without_object_lock_gets_it_when_predictions_are_retained(tgt):
    """Stacks older than the audit trail made the inference bucket without Object Lock; a deployment that retains
    prediction JSON turns it on (a locked write would fail there), one that does not leaves the bucket alone."""
    from datetime import UTC, datetime, timedelta

    key_arn = boto3.client("kms").create_key(Policy=stack_key_policy())["KeyMetadata"]["Arn"]
    s3, inference = boto3.client("s3"), tgt.bucket(wiring.INFERENCE)
    s3.create_bucket(Bucket=inference)
    s3.put_bucket_versioning(Bucket=inference, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(Bucket=inference, ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn}}]})
    retained = deployment.retained_resources(tgt)
    assert deployment.enable_object_lock(tgt, retained, Config(stage=STAGE)) == []  # dev: no retention
    with pytest.raises(s3.exceptions.ClientError, match="ObjectLockConfiguration"):
        s3.get_object_lock_configuration(Bucket=inference)
    retaining = Config(stage=STAGE, prediction_retention_days=30)
    assert deployment.enable_object_lock(tgt, retained, retaining) == [inference]
    configuration = s3.get_object_lock_configuration(Bucket=inference)["ObjectLockConfiguration"]
    assert configuration == {"ObjectLockEnabled": "Enabled"}  # no default retention: incoming/ stays deletable
    s3.put_object(Bucket=inference, Key="predictions/a.json", Body=b"{}", ObjectLockMode="GOVERNANCE",
                  ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=1), ChecksumAlgorithm="SHA256")
    assert deployment.enable_object_lock(tgt, retained, retaining) == []  # once
