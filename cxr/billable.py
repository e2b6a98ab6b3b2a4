"""What a stage leaves behind that CloudFormation does not remove, found through the APIs, and its clean-up.

The pipeline's Lambda creates the endpoint ``cxr-<stage>`` and a model and an endpoint
configuration per deployment, named after the training job (``cxr-<n><stage>-<attempt>-<uuid>``,
``wiring.resource_prefix``; before that, ``cxr-<attempt>-<uuid>`` with no stage in the name). The
search keeps the project-wide ``cxr-`` prefix so that resources named the old way are still found,
and decides ownership by data, not by name: a model is this stage's when its artifact lies in this
stage's data bucket, a configuration when it serves one of those models (or, once the model is gone,
when its training job wrote to that bucket). Running pipeline executions and in-progress training jobs are billed
until stopped. Buckets and the predictions table are retained by the stacks on purpose: they
are kept unless ``delete_data`` is asked, and reported either way; even then, versions under S3 Object
Lock (prediction JSON) are never bypassed: they, and their bucket, are reported as kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.exceptions import ClientError

from cxr.errors import UserError
from cxr.local.names import LocalNames
from cxr.target import Target
from infra import wiring

PREFIX = f"{wiring.TRAINING_JOB_PREFIX}-"

ENDPOINT = "endpoint"
ENDPOINT_CONFIG = "endpoint config"
MODEL = "model"
MODEL_PACKAGE = "model package"
"""A registered model of the stage's group: CloudFormation cannot delete a model package group that still holds
versions, so teardown deletes them first (the artifacts and each run's reports stay in the data bucket)."""
EXECUTION = "pipeline execution"
TRAINING_JOB = "training job"
STACK = "stack"
BUCKET = "bucket"
TABLE = "table"
SECRET = "secret"
DATA_KINDS = (BUCKET, TABLE, SECRET)
"""Retained on purpose: kept unless the user asks to delete data; everything else must go."""


@dataclass(frozen=True)
class Leftover:
    kind: str
    name: str
    detail: str = ""
    arn: str = ""

    @property
    def is_data(self) -> bool:
        return self.kind in DATA_KINDS

    def __str__(self) -> str:
        return f"{self.kind} {self.name}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Outcome:
    leftover: Leftover
    done: bool
    action: str
    """``stopped``, ``deleted``, ``emptied and deleted``, or why it failed."""


def find(target: Target) -> list[Leftover]:
    """Everything of this stage that costs money or outlives the stacks, in the order clean-up removes it."""
    sagemaker = target.client("sagemaker")
    data_prefix = f"s3://{target.bucket(wiring.DATA)}/"
    models = [m for m in _models(sagemaker) if m[1].startswith(data_prefix)]
    model_names = {name for name, _ in models}
    endpoint, serving = _endpoint(sagemaker, target.endpoint_name)
    return [
        *_executions(target),
        *_training_jobs(sagemaker, data_prefix),
        *([endpoint] if endpoint else []),
        *_endpoint_configs(sagemaker, model_names | serving, data_prefix),
        *(Leftover(MODEL, name, "artifact " + url) for name, url in models),
        *_model_packages(sagemaker, wiring.model_package_group(target.stage)),
        *_stacks(target),
        *_buckets(target),
        *_tables(target),
        *_secrets(target),
    ]


def _model_packages(sagemaker, group: str) -> list[Leftover]:
    try:
        packages = list(_pages(sagemaker, "list_model_packages", "ModelPackageSummaryList",
                               ModelPackageGroupName=group))
    except ClientError as exc:
        if "does not exist" in str(exc):
            return []
        raise
    return [Leftover(MODEL_PACKAGE, f"{group}/{p.get('ModelPackageVersion')}", p.get("ModelApprovalStatus", ""),
                     p["ModelPackageArn"]) for p in packages]


def _pages(client, operation: str, key: str, **kwargs) -> Iterator:
    for page in client.get_paginator(operation).paginate(**kwargs):
        yield from page.get(key, [])


def _state_machines(target: Target) -> list[str]:
    """The stage's pipeline: from its stack while it exists, else by the stage's tags (or the local name)."""
    try:
        return [target.state_machine_arn()]
    except UserError:
        pass
    client = target.client("stepfunctions")
    local_name = LocalNames(target.stage).state_machine
    found = []
    for machine in _pages(client, "list_state_machines", "stateMachines"):
        if machine["name"] == local_name:
            found.append(machine["stateMachineArn"])
            continue
        tags = {t["key"]: t["value"] for t in client.list_tags_for_resource(
            resourceArn=machine["stateMachineArn"]).get("tags", [])}
        if tags.get("project") == "cxr" and tags.get("stage") == target.stage:
            found.append(machine["stateMachineArn"])
    return found


def _executions(target: Target) -> list[Leftover]:
    client = target.client("stepfunctions")
    return [
        Leftover(EXECUTION, execution["name"], f"running since {execution['startDate']:%Y-%m-%d %H:%M}",
                 arn=execution["executionArn"])
        for machine in _state_machines(target)
        for execution in _pages(client, "list_executions", "executions", stateMachineArn=machine,
                                statusFilter="RUNNING")
    ]


def _training_jobs(sagemaker, data_prefix: str) -> list[Leftover]:
    """Jobs still running, or stopping (billed until they have stopped)."""
    found = []
    for status in ("InProgress", "Stopping"):
        for job in _pages(sagemaker, "list_training_jobs", "TrainingJobSummaries", NameContains=PREFIX,
                          StatusEquals=status):
            if _training_output(sagemaker, job["TrainingJobName"]).startswith(data_prefix):
                found.append(Leftover(TRAINING_JOB, job["TrainingJobName"], status))
    return found


def _training_output(sagemaker, name: str) -> str:
    try:
        return sagemaker.describe_training_job(TrainingJobName=name)["OutputDataConfig"]["S3OutputPath"]
    except ClientError:
        return ""


def _endpoint(sagemaker, name: str) -> tuple[Leftover | None, set[str]]:
    """The stage's endpoint and the configuration it serves."""
    try:
        endpoint = sagemaker.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if "Could not find" in str(exc):
            return None, set()
        raise
    config = endpoint["EndpointConfigName"]
    return Leftover(ENDPOINT, name, f"{endpoint['EndpointStatus']}, config {config}"), {config}


def _models(sagemaker) -> list[tuple[str, str]]:
    """(name, artifact URL) of every pipeline-named model."""
    found = []
    for model in _pages(sagemaker, "list_models", "Models", NameContains=PREFIX):
        name = model["ModelName"]
        if not name.startswith(PREFIX):
            continue
        described = sagemaker.describe_model(ModelName=name)
        containers = [described.get("PrimaryContainer") or {}, *described.get("Containers", [])]
        url = next((c["ModelDataUrl"] for c in containers if c.get("ModelDataUrl")), "")
        found.append((name, url))
    return found


def _endpoint_configs(sagemaker, ours: set[str], data_prefix: str) -> list[Leftover]:
    found = []
    for config in _pages(sagemaker, "list_endpoint_configs", "EndpointConfigs", NameContains=PREFIX):
        name = config["EndpointConfigName"]
        if not name.startswith(PREFIX):
            continue
        variants = sagemaker.describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"]
        served = {v["ModelName"] for v in variants}
        if name in ours or served & ours or _training_output(sagemaker, name).startswith(data_prefix):
            found.append(Leftover(ENDPOINT_CONFIG, name, "model " + ", ".join(sorted(served))))
    return found


def _stacks(target: Target) -> list[Leftover]:
    """The stage's stacks still present (the offline cloud has none)."""
    if target.is_local:
        return []
    client = target.client("cloudformation")
    found = []
    for part in wiring.STACK_PARTS:
        name = wiring.stack_name(target.stage, part)
        try:
            stack = client.describe_stacks(StackName=name)["Stacks"][0]
        except ClientError as exc:
            if "does not exist" in str(exc):
                continue
            raise
        if stack["StackStatus"] != "DELETE_COMPLETE":
            found.append(Leftover(STACK, name, stack["StackStatus"]))
    return found


def _buckets(target: Target) -> list[Leftover]:
    s3 = target.client("s3")
    found = []
    for role in (wiring.DATA, wiring.INFERENCE, wiring.ACCESS_LOGS):
        name = target.bucket(role)
        try:
            s3.head_bucket(Bucket=name)
        except ClientError:
            continue
        count = size = 0
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
            for version in page.get("Versions", []):
                count, size = count + 1, size + version["Size"]
            count += len(page.get("DeleteMarkers", []))
        found.append(Leftover(BUCKET, name, f"{count} object versions, {size / 1e6:.1f} MB"))
    return found


RETAINED_TABLES = {wiring.PREDICTIONS_TABLE.id: "predictions",
                   wiring.REVIEW_TASKS_TABLE.id: "review tasks and verdicts"}


def _tables(target: Target) -> list[Leftover]:
    """The retained tables: CloudFormation names them ``<stack>-PredictionsTable...``, ``<stack>-ReviewTasks...``."""
    client = target.client("dynamodb")
    found, names = [], list(_pages(client, "list_tables", "TableNames"))
    for table_id, what in RETAINED_TABLES.items():
        prefixes = (f"{wiring.stack_name(target.stage, 'Inference')}-{table_id}",
                    LocalNames(target.stage).table(wiring.TABLES[table_id]))
        found += [Leftover(TABLE, name, what) for name in names if name.startswith(prefixes)]
    return found


def _secrets(target: Target) -> list[Leftover]:
    """The retained DICOM pseudonym key (infra/README.md, "DICOM"): deleting it changes every pseudonym."""
    client, name = target.client("secretsmanager"), wiring.PSEUDONYM_SECRET_NAME.format(stage=target.stage)
    try:
        described = client.describe_secret(SecretId=name)
    except ClientError:
        return []
    return [] if described.get("DeletedDate") else [Leftover(SECRET, name, "DICOM pseudonym key")]


def clean(target: Target, leftovers: list[Leftover], *, delete_data: bool) -> list[Outcome]:
    """Stop and delete what ``find`` returned (data only with ``delete_data``); one failure does not stop the rest."""
    outcomes = []
    for leftover in leftovers:
        if leftover.kind == STACK or (leftover.is_data and not delete_data):
            continue
        try:
            action = _remove(target, leftover)
        except LockedVersions as exc:  # the bucket stays, with everything Object Lock does not hold deleted
            outcomes.append(Outcome(leftover, False, f"kept, locked: {exc}"))
        except Exception as exc:  # reported, and the verification lists it as left: the rest still goes
            outcomes.append(Outcome(leftover, False, f"failed: {type(exc).__name__}: {exc}"))
        else:
            outcomes.append(Outcome(leftover, True, action))
    return outcomes


def _remove(target: Target, leftover: Leftover) -> str:
    sagemaker = target.client("sagemaker")
    if leftover.kind == EXECUTION:
        target.client("stepfunctions").stop_execution(executionArn=leftover.arn, error="cxr.Teardown",
                                                      cause="stopped by cxr teardown")
        return "stopped"
    if leftover.kind == TRAINING_JOB:
        sagemaker.stop_training_job(TrainingJobName=leftover.name)
        return "stopping"
    if leftover.kind == ENDPOINT:
        sagemaker.delete_endpoint(EndpointName=leftover.name)
        return "deleted"
    if leftover.kind == ENDPOINT_CONFIG:
        sagemaker.delete_endpoint_config(EndpointConfigName=leftover.name)
        return "deleted"
    if leftover.kind == MODEL:
        sagemaker.delete_model(ModelName=leftover.name)
        return "deleted"
    if leftover.kind == MODEL_PACKAGE:
        sagemaker.delete_model_package(ModelPackageName=leftover.arn)
        return "deleted"
    if leftover.kind == BUCKET:
        delete_bucket(target.client("s3"), leftover.name)
        return "emptied and deleted"
    if leftover.kind == TABLE:
        target.client("dynamodb").delete_table(TableName=leftover.name)
        return "deleted"
    if leftover.kind == SECRET:  # without a recovery window: a new deployment may create it again at once
        target.client("secretsmanager").delete_secret(SecretId=leftover.name, ForceDeleteWithoutRecovery=True)
        return "deleted"
    raise ValueError(f"no clean-up for {leftover.kind}")


class LockedVersions(RuntimeError):
    """Versions under S3 Object Lock that a teardown left: it never bypasses a retention period."""

    def __init__(self, bucket: str, locked: list[dict]):
        self.bucket, self.locked = bucket, locked
        latest = max((v["retain_until"] for v in locked if v["retain_until"]), default=None)
        modes = sorted({v["mode"] for v in locked if v["mode"]})
        super().__init__(
            f"{len(locked)} version(s) under Object Lock ({', '.join(modes) or 'legal hold'}) kept"
            + (f", locked until {latest:%Y-%m-%d}" if latest else "")
            + "; not bypassed: delete them after that date, or on purpose as someone allowed "
            "s3:BypassGovernanceRetention (aws s3api delete-object --bypass-governance-retention ...)")


def delete_bucket(s3, bucket: str, attempts: int = 3) -> None:
    """Empty, then delete; server access logs of the emptying can land in between, so empty again and retry.

    Versions under Object Lock (prediction JSON, ``infra/README.md``) cannot be deleted before their date
    without ``BypassGovernanceRetention``, which a teardown never sends: they stay, and so does the bucket,
    reported with :class:`LockedVersions`."""
    for attempt in range(attempts):
        empty_bucket(s3, bucket)
        try:
            s3.delete_bucket(Bucket=bucket)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketNotEmpty" or attempt == attempts - 1:
                raise


def empty_bucket(s3, bucket: str) -> int:
    """Delete every version and delete marker (a versioned bucket is empty only then); returns how many.

    Raises :class:`LockedVersions` after deleting everything else when Object Lock refused some versions;
    any other refusal raises at once."""
    deleted, locked = 0, []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        objects = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                   for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for start in range(0, len(objects), 1000):
            batch = objects[start:start + 1000]
            errors = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True}).get("Errors", [])
            for error in errors:
                # AWS names the version; moto 5.2.5 leaves VersionId out, so look at the batch's versions of the key
                versions = ([error["VersionId"]] if error.get("VersionId") else
                            [o["VersionId"] for o in batch if o["Key"] == error["Key"]])
                denied = error.get("Code") == "AccessDenied"
                locks = [_lock(s3, bucket, error["Key"], v) for v in versions] if denied else []
                if not any(locks):
                    raise RuntimeError(f"cannot delete s3://{bucket}/{error.get('Key')} version "
                                       f"{error.get('VersionId')}: {error.get('Code')}: {error.get('Message')}")
                locked += [lock for lock in locks if lock and lock not in locked]
            deleted += len(batch) - len(errors)
    if locked:
        raise LockedVersions(bucket, locked)
    return deleted


def _lock(s3, bucket: str, key: str, version_id: str) -> dict | None:
    """The Object Lock that refused a version's delete (DeleteObjects answers AccessDenied), or None if none did."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key, VersionId=version_id)
    except ClientError:  # deleted after all (a delete marker, or another version of the key)
        return None
    mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
    held = head.get("ObjectLockLegalHoldStatus") == "ON"
    if not held and not (until and until > datetime.now(UTC)):
        return None
    return {"key": key, "version_id": version_id, "mode": mode, "retain_until": until}


def wait_until_gone(target: Target, kinds: tuple[str, ...], timeout_s: float, sleep: Callable = time.sleep,
                    interval_s: float = 15) -> list[Leftover]:
    """Endpoints delete and training jobs stop asynchronously: poll until none of ``kinds`` is left or time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        pending = [leftover for leftover in find(target) if leftover.kind in kinds]
        if not pending or time.monotonic() >= deadline:
            return pending
        sleep(interval_s)
