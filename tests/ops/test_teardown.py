"""`cxr teardown`'s check and clean-up against the offline cloud: what the pipeline made goes, data stays unless asked.

The pipeline's resources are created the way ``lambdas/deploy_model.py`` creates them (a model and
an endpoint configuration named after the training job, the stage's endpoint), next to another
stage's model that must survive; a running execution stands for a pipeline in flight.
"""

import json

import boto3
import pytest

from cxr import billable
from cxr.commands import teardown
from cxr.local import cloud as local_cloud
from cxr.target import Target
from infra import wiring
from infra.config import Config

STAGE = "ops"
OTHER_STAGE = "other"
JOB = "cxr-0-11111111-2222-3333-4444-555555555555"
OTHER_JOB = "cxr-0-99999999-8888-7777-6666-555555555555"
ROLE = f"arn:aws:iam::{local_cloud.ACCOUNT}:role/cxr-{STAGE}-sagemaker"
WAIT = json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 3600, "End": True}}})


@pytest.fixture
def cloud(tmp_path):
    with local_cloud.start(Config.demo(stage=STAGE), tmp_path / "local") as running:
        yield running


@pytest.fixture
def target(cloud):
    return Target(session=boto3.Session(region_name=local_cloud.REGION), stage=STAGE, account=local_cloud.ACCOUNT,
                  region=local_cloud.REGION)


def deploy_model(target: Target, name: str, bucket: str, endpoint: str | None = None) -> None:
    sagemaker = target.client("sagemaker")
    sagemaker.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": "local/cxr-inference:latest", "ModelDataUrl": f"s3://{bucket}/models/run/{name}/output/model.tar.gz"})
    sagemaker.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name,
        "ServerlessConfig": {"MemorySizeInMB": 3072, "MaxConcurrency": 5}}])
    if endpoint:
        sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=name)


def running_execution(target: Target) -> str:
    client = target.client("stepfunctions")
    machine = client.create_state_machine(name=f"cxr-{STAGE}-{wiring.STATE_MACHINE_ID}", definition=WAIT,
                                          roleArn=ROLE)["stateMachineArn"]
    return client.start_execution(stateMachineArn=machine, name="run-1")["executionArn"]


@pytest.fixture
def deployed(target):
    """The stage after one pipeline deployment, a second run in flight, and uploads in its buckets."""
    deploy_model(target, JOB, target.bucket(wiring.DATA), endpoint=target.endpoint_name)
    deploy_model(target, OTHER_JOB, wiring.BUCKETS[wiring.DATA].name(OTHER_STAGE, target.account, target.region))
    execution = running_execution(target)
    s3 = target.client("s3")
    data = target.bucket(wiring.DATA)
    for body in (b"first", b"second"):
        s3.put_object(Bucket=data, Key="manifests/run-1/train.manifest", Body=body)
    s3.delete_object(Bucket=data, Key="manifests/run-1/train.manifest")  # a delete marker: still not empty
    s3.put_object(Bucket=target.bucket(wiring.INFERENCE), Key="predictions/a.jpeg.json", Body=b"{}")  # not a trigger
    return execution


def kinds(leftovers) -> list[tuple[str, str]]:
    return [(leftover.kind, leftover.name) for leftover in leftovers]


def test_find_lists_the_stage_s_billable_resources_and_its_data(target, deployed):
    found = kinds(billable.find(target))
    assert found[:4] == [(billable.EXECUTION, "run-1"), (billable.ENDPOINT, f"cxr-{STAGE}"),
                         (billable.ENDPOINT_CONFIG, JOB), (billable.MODEL, JOB)]
    assert (billable.MODEL, OTHER_JOB) not in found and (billable.ENDPOINT_CONFIG, OTHER_JOB) not in found
    assert {name for kind, name in found if kind == billable.BUCKET} == {
        target.bucket(role) for role in (wiring.DATA, wiring.INFERENCE, wiring.ACCESS_LOGS)}
    assert (billable.TABLE, f"cxr-{STAGE}-{wiring.PREDICTIONS_TABLE.id}") in found
    assert (billable.SECRET, wiring.PSEUDONYM_SECRET_NAME.format(stage=STAGE)) in found


def test_teardown_stops_and_deletes_before_the_stacks_go_and_keeps_the_data(target, deployed):
    seen_by_destroy = []

    def destroy() -> int:
        seen_by_destroy.append(kinds(lo for lo in billable.find(target) if not lo.is_data))
        return 0

    report = teardown.teardown(target, delete_data=False, destroy=destroy, wait_s=0)

    assert seen_by_destroy == [[]]  # nothing of the pipeline's was left for CloudFormation to trip on
    assert [(o.action, o.leftover.kind, o.leftover.name) for o in report.outcomes] == [
        ("stopped", billable.EXECUTION, "run-1"), ("deleted", billable.ENDPOINT, f"cxr-{STAGE}"),
        ("deleted", billable.ENDPOINT_CONFIG, JOB), ("deleted", billable.MODEL, JOB)]
    assert report.left == [] and report.ok and report.destroy_status == 0
    assert {kind for kind, _ in kinds(report.kept)} == {billable.BUCKET, billable.TABLE, billable.SECRET}

    sagemaker, s3 = target.client("sagemaker"), target.client("s3")
    assert target.client("stepfunctions").describe_execution(executionArn=deployed)["status"] == "ABORTED"
    assert [m["ModelName"] for m in sagemaker.list_models()["Models"]] == [OTHER_JOB]
    assert [c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]] == [OTHER_JOB]
    assert sagemaker.list_endpoints()["Endpoints"] == []
    versions = s3.list_object_versions(Bucket=target.bucket(wiring.DATA))
    assert len(versions["Versions"]) == 2 and len(versions["DeleteMarkers"]) == 1


def test_the_stage_s_model_packages_go_before_the_stacks_another_stage_s_stay(target):
    """CloudFormation cannot delete a model package group that holds versions: teardown deletes them first."""
    sagemaker = target.client("sagemaker")
    other = wiring.model_package_group(OTHER_STAGE)
    sagemaker.create_model_package_group(ModelPackageGroupName=other)
    for group in (wiring.model_package_group(STAGE), wiring.model_package_group(STAGE), other):
        sagemaker.create_model_package(ModelPackageGroupName=group, ModelApprovalStatus="Approved")
    seen_by_destroy = []
    report = teardown.teardown(target, delete_data=False, wait_s=0, destroy=lambda: seen_by_destroy.append(
        kinds(lo for lo in billable.find(target) if not lo.is_data)) or 0)
    assert seen_by_destroy == [[]] and report.ok
    assert [(o.action, o.leftover.name) for o in report.outcomes] == [
        ("deleted", f"{wiring.model_package_group(STAGE)}/1"), ("deleted", f"{wiring.model_package_group(STAGE)}/2")]
    assert sagemaker.list_model_packages(ModelPackageGroupName=wiring.model_package_group(STAGE))[
        "ModelPackageSummaryList"] == []
    assert len(sagemaker.list_model_packages(ModelPackageGroupName=other)["ModelPackageSummaryList"]) == 1


def test_delete_data_empties_every_version_and_removes_buckets_and_table(target, deployed):
    report = teardown.teardown(target, delete_data=True, destroy=None, wait_s=0)
    assert report.ok and report.kept == [] and report.left == []
    removed = {(o.leftover.kind, o.action) for o in report.outcomes}
    assert (billable.BUCKET, "emptied and deleted") in removed and (billable.TABLE, "deleted") in removed
    assert (billable.SECRET, "deleted") in removed
    names = {b["Name"] for b in target.client("s3").list_buckets()["Buckets"]}
    assert not names & {target.bucket(role) for role in wiring.BUCKETS}
    assert sorted(target.client("dynamodb").list_tables()["TableNames"]) == [  # the stacks delete these (DESTROY)
        f"cxr-{STAGE}-{table.id}" for table in (wiring.IDEMPOTENCY_TABLE, wiring.SOURCE_STATE_TABLE)]


def test_a_second_teardown_finds_nothing_to_remove(target, deployed):
    teardown.teardown(target, delete_data=True, destroy=None, wait_s=0)
    again = teardown.teardown(target, delete_data=True, destroy=None, wait_s=0)
    assert again.found == [] and again.outcomes == [] and again.ok


def test_a_failed_cdk_destroy_makes_the_teardown_fail(target, deployed):
    report = teardown.teardown(target, delete_data=False, destroy=lambda: 1, wait_s=0)
    assert report.left == [] and not report.ok


def test_what_cannot_be_removed_is_reported_as_left(target, deployed, monkeypatch):
    from moto.sagemaker.exceptions import ResourceInUseException
    from moto.sagemaker.models import SageMakerModelBackend

    def refuse(self, model_name):
        raise ResourceInUseException(f"model {model_name} is in use")

    monkeypatch.setattr(SageMakerModelBackend, "delete_model", refuse)
    report = teardown.teardown(target, delete_data=False, destroy=None, wait_s=0)
    failed = [(o.leftover.name, o.action) for o in report.outcomes if not o.done]
    assert len(failed) == 1 and failed[0][0] == JOB and "ResourceInUse" in failed[0][1]
    assert kinds(report.left) == [(billable.MODEL, JOB)] and not report.ok


def test_an_in_progress_training_job_of_the_stage_is_stopped_and_waited_for(cloud, target, deployed, monkeypatch):
    from moto.sagemaker.models import sagemaker_backends

    monkeypatch.setattr(cloud, "start_training_job", lambda job: None)  # stays InProgress: no local run
    for name, bucket in ((JOB, target.bucket(wiring.DATA)),
                         (OTHER_JOB, wiring.BUCKETS[wiring.DATA].name(OTHER_STAGE, target.account, target.region))):
        target.client("sagemaker").create_training_job(
            TrainingJobName=name, RoleArn=ROLE,
            AlgorithmSpecification={"TrainingImage": "x", "TrainingInputMode": "File"},
            OutputDataConfig={"S3OutputPath": f"s3://{bucket}/models/run/"},
            ResourceConfig={"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
            StoppingCondition={"MaxRuntimeInSeconds": 600},
        )
    jobs = sagemaker_backends[target.account][target.region].training_jobs

    def sleep(seconds):  # while teardown waits, the stopping job ends, as train.py does on SIGTERM
        for job in jobs.values():
            if job.training_job_status == "Stopping":
                job.training_job_status = "Stopped"

    assert (billable.TRAINING_JOB, JOB) in kinds(billable.find(target))
    report = teardown.teardown(target, delete_data=False, destroy=None, wait_s=60, sleep=sleep)
    stopped = [(o.action, o.leftover.name) for o in report.outcomes if o.leftover.kind == billable.TRAINING_JOB]
    assert stopped == [("stopping", JOB)] and report.ok
    assert jobs[JOB].training_job_status == "Stopped" and jobs[OTHER_JOB].training_job_status == "InProgress"


def test_a_training_job_that_does_not_stop_in_time_is_left(cloud, target, monkeypatch):
    monkeypatch.setattr(cloud, "start_training_job", lambda job: None)
    target.client("sagemaker").create_training_job(
        TrainingJobName=JOB, RoleArn=ROLE, AlgorithmSpecification={"TrainingImage": "x", "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": f"s3://{target.bucket(wiring.DATA)}/models/run/"},
        ResourceConfig={"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        StoppingCondition={"MaxRuntimeInSeconds": 600},
    )
    report = teardown.teardown(target, delete_data=False, destroy=None, wait_s=0)
    assert kinds(report.left) == [(billable.TRAINING_JOB, JOB)] and not report.ok


def test_an_endpoint_config_whose_model_is_gone_is_found_by_its_training_job(cloud, target, monkeypatch):
    monkeypatch.setattr(cloud, "start_training_job", lambda job: None)
    sagemaker = target.client("sagemaker")
    for name, stage in ((JOB, STAGE), (OTHER_JOB, OTHER_STAGE)):
        bucket = wiring.BUCKETS[wiring.DATA].name(stage, target.account, target.region)
        sagemaker.create_training_job(
            TrainingJobName=name, RoleArn=ROLE,
            AlgorithmSpecification={"TrainingImage": "x", "TrainingInputMode": "File"},
            OutputDataConfig={"S3OutputPath": f"s3://{bucket}/models/run/"},
            ResourceConfig={"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
            StoppingCondition={"MaxRuntimeInSeconds": 600},
        )
        deploy_model(target, name, bucket)
        sagemaker.delete_model(ModelName=name)
    found = [name for kind, name in kinds(billable.find(target)) if kind == billable.ENDPOINT_CONFIG]
    assert found == [JOB]


def test_a_bucket_that_fills_again_while_being_deleted_is_emptied_again(aws):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="cxr-test-access-logs")
    s3.put_bucket_versioning(Bucket="cxr-test-access-logs", VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket="cxr-test-access-logs", Key="a", Body=b"1")
    real_delete = s3.delete_bucket
    attempts = []

    def delete_bucket(Bucket):  # an access log delivered after the bucket was emptied
        attempts.append(Bucket)
        if len(attempts) == 1:
            s3.put_object(Bucket=Bucket, Key="late-log", Body=b"2")
        return real_delete(Bucket=Bucket)

    s3.delete_bucket = delete_bucket
    billable.delete_bucket(s3, "cxr-test-access-logs")
    assert attempts == ["cxr-test-access-logs", "cxr-test-access-logs"]
    assert "cxr-test-access-logs" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_delete_data_reports_locked_prediction_versions_and_never_bypasses_them(target, deployed):
    """A prediction JSON under governance retention survives `--delete-data`: its bucket is reported as kept, locked."""
    from datetime import UTC, datetime, timedelta

    s3, inference = target.client("s3"), target.bucket(wiring.INFERENCE)
    until = datetime.now(UTC) + timedelta(days=30)
    locked = s3.put_object(Bucket=inference, Key="predictions/a.png.json", Body=b"{}", ObjectLockMode="GOVERNANCE",
                           ObjectLockRetainUntilDate=until, ChecksumAlgorithm="SHA256")["VersionId"]
    s3.put_object(Bucket=inference, Key="incoming/a.png", Body=b"x")
    report = teardown.teardown(target, delete_data=True, destroy=None, wait_s=0)
    assert not report.ok
    [kept] = [o for o in report.outcomes if o.leftover.name == inference]
    assert not kept.done and "1 version(s) under Object Lock (GOVERNANCE)" in kept.action
    assert f"locked until {until:%Y-%m-%d}" in kept.action and "not bypassed" in kept.action
    assert [lo.name for lo in report.left if lo.kind == billable.BUCKET] == [inference]
    versions = s3.list_object_versions(Bucket=inference)["Versions"]
    assert ("predictions/a.png.json", locked) in [(v["Key"], v["VersionId"]) for v in versions]
    # the upload went (the offline cloud's still-live trigger may write again as it goes; `cdk destroy` removes it)
    assert not [v for v in versions if v["Key"].startswith("incoming/")]
    assert target.bucket(wiring.DATA) not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
