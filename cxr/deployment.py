"""The project's configuration and the pinned CDK CLI, as `cxr deploy`, `cxr teardown` and `cxr cost` use them.

The configuration is cdk.json's ``context.cxr`` with ``-c KEY=VALUE`` overrides on top, read by
the same :class:`infra.config.Config` the CDK app reads; overrides reach the app as top-level CDK
context keys (``-c endpoint_mode=async``), which ``Config.from_context`` applies over cdk.json's
object. Every command is validated here first, so a bad value fails in one line before CDK starts.

What an earlier teardown retained (the buckets and their KMS key) is found here too
(:func:`retained_resources`), so that a deployment adopts it instead of failing on a bucket name
that exists (:func:`adopt_overrides`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import ClientError

from cxr import billable
from cxr.arguments import key_values
from cxr.errors import UserError
from cxr.target import Target
from infra import wiring
from infra.config import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent
CDK_BIN = ROOT / "node_modules" / ".bin" / "cdk"
"""Installed by `make setup` (``npm ci``) at the version package-lock.json pins."""


def add_context_argument(parser) -> None:
    parser.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE",
                        help="override a cdk.json setting, e.g. -c endpoint_mode=realtime (repeatable)")


def parse_context(pairs: list[str]) -> dict[str, str]:
    return key_values(pairs, "-c")


def cdk_context(root: Path = ROOT) -> dict:
    try:
        return json.loads((root / "cdk.json").read_text()).get("context", {})
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read cdk.json: {exc}") from None


def project_config(overrides: dict[str, str], root: Path = ROOT) -> Config:
    """The configuration the CDK app would build with these overrides."""
    context = cdk_context(root) | overrides
    try:
        return Config.from_context(context.get)
    except ConfigError as exc:
        raise UserError(f"configuration (cdk.json and -c): {exc}") from None


def cdk_command(action: list[str], overrides: dict[str, str], profile: str | None = None) -> list[str]:
    """``npx --no -- cdk <action> ... -c KEY=VALUE``: the pinned CLI only (``--no``: never download another)."""
    command = ["npx", "--no", "--", "cdk", *action]
    for key, value in overrides.items():
        command += ["-c", f"{key}={value}"]
    if profile:
        command += ["--profile", profile]
    return command


def deploy_command(overrides: dict[str, str], profile: str | None = None) -> list[str]:
    return cdk_command(["deploy", "--all", "--require-approval", "never"], overrides, profile)


def synth_command(overrides: dict[str, str], profile: str | None = None) -> list[str]:
    return cdk_command(["synth", "--quiet"], overrides, profile)


def destroy_command(overrides: dict[str, str], profile: str | None = None) -> list[str]:
    return cdk_command(["destroy", "--all", "--force"], overrides, profile)


def bootstrap_command(account: str, region: str, profile: str | None = None) -> list[str]:
    return cdk_command(["bootstrap", f"aws://{account}/{region}"], {}, profile)


def require_cdk_cli() -> None:
    """One line naming the fix when Node.js or the pinned CDK CLI is missing."""
    if shutil.which("npx") is None:
        raise UserError("Node.js is not installed (no `npx` on PATH): install Node.js 20, then run `make setup`")
    if not CDK_BIN.exists():
        raise UserError("the CDK CLI is not installed: run `make setup` (it installs the pinned aws-cdk into "
                        "node_modules/)")


def run_cdk(command: list[str], region: str | None) -> int:
    """Run the CLI from the project root with the region the target resolved; its output goes to the terminal."""
    env = dict(os.environ)
    if region:
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = region
    env.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def stage_overrides(args) -> dict[str, str]:
    """``-c`` pairs plus ``--stage`` (which wins: it also names the stacks the command looks for)."""
    overrides = parse_context(args.context)
    if args.stage:
        overrides["stage"] = args.stage
    return overrides


BUCKET, KEY, SECRET = billable.BUCKET, "key", billable.SECRET


@dataclass(frozen=True)
class Retained:
    """A resource of the stage that outlived its stack: kept by ``DeletionPolicy: Retain`` at a teardown."""

    kind: str
    """:data:`BUCKET`, :data:`KEY` or :data:`SECRET`."""
    name: str
    """The bucket's name, the key's ARN, or the secret's name."""
    role: str = ""
    """The bucket's role in ``infra.wiring.BUCKETS`` ("" for the key)."""
    problem: str = ""
    """Why a deployment cannot adopt it as it is ("" when it can), with the way out."""

    def __str__(self) -> str:
        return f"{self.kind} {self.name}" + (f": {self.problem}" if self.problem else "")


def retained_resources(tgt: Target) -> list[Retained]:
    """The stage's buckets that exist outside its storage stack, then the KMS key their default encryption
    names (the key that encrypts their objects), each with what would stop a deployment from adopting it.

    A bucket the stack owns is deployed, not retained; one that exists without it was kept by a teardown
    (its name is derived from stage, account and region, so CloudFormation could not create it again). The
    key is found through the buckets rather than by its alias: ``alias/cxr-<stage>`` was the stack's and was
    deleted with it. Used by `cxr deploy` (adoption) and `cxr doctor` (a report before the first deploy).
    """
    owned = _storage_stack_resources(tgt)
    s3 = tgt.client("s3")
    found, keys = [], []
    for role in wiring.BUCKETS:
        name = tgt.bucket(role)
        if name in owned or not _bucket_exists(s3, name):
            continue
        key_id, problem = (None, "") if role == wiring.ACCESS_LOGS else _bucket_key(s3, name)
        found.append(Retained(BUCKET, name, role, problem))
        if key_id and key_id not in keys:
            keys.append(key_id)
    by_arn = {key.name: key for key in (_key(tgt, key_id) for key_id in keys)}  # an id and an ARN: one key
    return found + list(by_arn.values()) + _secret(tgt, owned)


def _secret(tgt: Target, owned: set[str]) -> list[Retained]:
    """The DICOM pseudonym key, when it exists outside the storage stack (its name is fixed, as a bucket's)."""
    name = wiring.PSEUDONYM_SECRET_NAME.format(stage=tgt.stage)
    try:
        described = tgt.client("secretsmanager").describe_secret(SecretId=name)
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ResourceNotFoundException":
            return []
        raise
    if described["ARN"] in owned:
        return []
    problem = ("it is scheduled for deletion: restore it (aws secretsmanager restore-secret --secret-id "
               f"{name}) to keep the pseudonyms, or delete it now with --force-delete-without-recovery"
               if described.get("DeletedDate") else "")
    return [Retained(SECRET, name, problem=problem)]


def adopt_overrides(retained: list[Retained]) -> dict[str, str]:
    """The CDK context that makes the stacks adopt ``retained`` (``infra/stacks/storage.py``); raises with
    every reason when something cannot be adopted as it is."""
    problems = [str(item) for item in retained if item.problem]
    keys = [item.name for item in retained if item.kind == KEY]
    if len(keys) > 1:
        problems.append(f"the retained buckets are encrypted with {len(keys)} different keys ({', '.join(keys)}): "
                        "a deployment uses one")
    if problems:
        raise UserError("cannot adopt what an earlier teardown retained: " + "; ".join(problems))
    overrides = {}
    roles = sorted(item.role for item in retained if item.kind == BUCKET)
    if roles:
        overrides["adopt_buckets"] = ",".join(roles)
    if keys:
        overrides["adopt_key_arn"] = keys[0]
    if any(item.kind == SECRET for item in retained):
        overrides["adopt_pseudonym_secret"] = "true"
    return overrides


def enable_object_lock(tgt: Target, retained: list[Retained], config: Config) -> list[str]:
    """Turn S3 Object Lock on for an adopted predictions bucket created without it (by stacks older than the audit
    trail), when the configuration locks prediction JSON: every locked write would fail there ("Bucket is missing
    ObjectLockConfiguration"). S3 allows it on an existing versioned bucket (PutObjectLockConfiguration with
    ``ObjectLockEnabled``, no default rule, as the stacks create it); it cannot be turned off again. Returns the
    buckets changed."""
    if not config.retention_days:
        return []
    s3, enabled = tgt.client("s3"), []
    for item in retained:
        if item.kind != BUCKET or item.role != wiring.PREDICTIONS_BUCKET or _object_lock_enabled(s3, item.name):
            continue
        try:
            s3.put_object_lock_configuration(Bucket=item.name,
                                             ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"})
        except ClientError as exc:
            raise UserError(f"the retained bucket {item.name} has no S3 Object Lock, which prediction_retention_days="
                            f"{config.retention_days} needs, and enabling it failed "
                            f"({exc.response['Error'].get('Message', exc)}); enable versioning on it, or deploy with "
                            "-c prediction_retention_days=0") from None
        enabled.append(item.name)
    return enabled


def _object_lock_enabled(s3, bucket: str) -> bool:
    try:
        configuration = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ObjectLockConfigurationNotFoundError":
            return False
        raise
    return configuration.get("ObjectLockEnabled") == "Enabled"


def _storage_stack_resources(tgt: Target) -> set[str]:
    """Physical ids of what the stage's storage stack holds now (none when it does not exist)."""
    stack = wiring.stack_name(tgt.stage, "Storage")
    try:
        pages = tgt.client("cloudformation").get_paginator("list_stack_resources").paginate(StackName=stack)
        return {r.get("PhysicalResourceId", "") for page in pages for r in page["StackResourceSummaries"]
                if not r["ResourceStatus"].startswith("DELETE_")}
    except ClientError as exc:
        if "does not exist" in str(exc):
            return set()
        raise


def _bucket_exists(s3, name: str) -> bool:
    try:
        s3.head_bucket(Bucket=name)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchBucket"):
            return False
        raise UserError(f"bucket {name} exists but cannot be read with these credentials "
                        f"({exc.response['Error']['Code']}): is it another account's?") from None
    return True


def _bucket_key(s3, name: str) -> tuple[str | None, str]:
    """The KMS key of the bucket's default encryption, or a problem: the stacks encrypt it with their key."""
    try:
        rules = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"]
    except ClientError as exc:
        return None, f"cannot read its encryption ({exc.response['Error']['Code']})"
    default = rules[0].get("ApplyServerSideEncryptionByDefault", {}) if rules else {}
    if default.get("SSEAlgorithm") != "aws:kms" or not default.get("KMSMasterKeyID"):
        return None, (f"its default encryption is {default.get('SSEAlgorithm', 'none')}, not SSE-KMS with a key of "
                      "its own: adopt it only as the stacks left it")
    return default["KMSMasterKeyID"], ""


def _key(tgt: Target, key_id: str) -> Retained:
    """The key, with what would keep the new stacks from using it."""
    kms = tgt.client("kms")
    try:
        metadata = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    except ClientError as exc:
        return Retained(KEY, key_id, problem=f"the retained buckets' key cannot be described "
                                             f"({exc.response['Error']['Code']}): their objects cannot be read")
    arn, state = metadata["Arn"], metadata["KeyState"]
    if metadata.get("KeyManager") != "CUSTOMER":
        return Retained(KEY, arn, problem="an AWS managed key: the stacks need their customer managed key")
    if state == "PendingDeletion":
        return Retained(KEY, arn, problem=f"scheduled for deletion: run `aws kms cancel-key-deletion --key-id {arn}` "
                                          f"and `aws kms enable-key --key-id {arn}`")
    if state != "Enabled":
        return Retained(KEY, arn, problem=f"{state}: run `aws kms enable-key --key-id {arn}`")
    policy = json.loads(kms.get_key_policy(KeyId=arn, PolicyName="default")["Policy"])
    return Retained(KEY, arn, problem=_key_policy_problem(policy, arn))


def _key_policy_problem(policy: dict, arn: str) -> str:
    """What the new stacks need of a key policy they cannot change (an adopted key is not theirs).

    Their roles get the key in identity policies, which count only when the key policy gives the
    account itself the key ("Allowing access to the AWS account and enabling IAM policies", AWS KMS
    developer guide); the services' statements let CloudWatch Logs and alarms encrypt with it.
    """
    _, partition, _, _, account, _ = arn.split(":", 5)
    statements = policy.get("Statement", [])
    statements = statements if isinstance(statements, list) else [statements]
    root = {f"arn:{partition}:iam::{account}:root", account}
    delegates = any(
        st.get("Effect") == "Allow" and "kms:*" in _as_list(st.get("Action"))
        and root & set(_as_list((st.get("Principal") or {}).get("AWS"))) for st in statements)
    if not delegates:
        return (f"its key policy does not give account {account} the key (kms:* for its root), so the new roles' "
                "IAM policies could not use it")
    missing = sorted(set(wiring.KEY_SERVICE_STATEMENTS) - {st.get("Sid") for st in statements})
    if missing:
        return f"its key policy lacks the statements {', '.join(missing)} that let CloudWatch use the key"
    return ""


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value] if value is not None else []
