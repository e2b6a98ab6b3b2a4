"""The Train state: SageMaker CreateTrainingJob with the RUN_JOB (``.sync``) integration pattern.

Written as the ASL itself (a ``CustomState``) because CDK's ``SageMakerCreateTrainingJob`` has no
spot, checkpoint or inter-container encryption settings; the IAM statements are the ones AWS
documents for this integration (https://docs.aws.amazon.com/step-functions/latest/dg/sagemaker-iam.html),
scoped to the stage's jobs (``wiring.resource_prefix``) and one passed role where the documented policy allows a scope.
"""

from __future__ import annotations

import json

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from infra import wiring
from infra.config import Config
from infra.images import is_gpu
from lambdas.deploy_model import has_instance_storage
from lambdas.domain import layout

RESOURCE = wiring.TRAINING_INTEGRATION
SHARDED_CHANNELS = ("train", "validation", "test")
"""Read from PrepareDataset's tar shards (``$.dataset.shards.<name>``, an ``S3Prefix``)."""
CHANNELS = (*SHARDED_CHANNELS, "benchmark")
"""One input channel each; the benchmark set is a ``ManifestFile`` (``$.dataset.channels.benchmark``)."""
PRETRAINED_CHANNEL = "pretrained"
"""Initial weights (a ``.pth`` file); train.py reads the channel when it is there."""
EVENTS_RULE = "StepFunctionsGetEventsForSageMakerTrainingJobsRule"


def has_volume_key(config: Config) -> bool:
    """The job's volume gets the stage key, except on NVMe instances: SageMaker refuses one there (hardware
    encrypts the disk)."""
    return not has_instance_storage(config.training_instance_type)


def shard_input(config: Config, channel: str) -> tuple[str, str]:
    """``InputMode`` and ``S3DataDistributionType`` of a shard channel.

    On one instance, ``File`` and ``FullyReplicated``: the instance downloads a few hundred shards, not an
    object per image. On more, ``FastFile`` (SageMaker "streams data directly from S3 to the container ...
    and provides file system access to the data", reading "best when the data is read sequentially":
    CreateTrainingJob API, ``TrainingInputMode``): hosts start without a download and read their shards front
    to back; validation and test are read by rank 0 alone, so the other hosts fetch none of them. The training
    split is ``ShardedByS3Key`` ("each instance gets approximately 1/n of the number of S3 objects ... Don't
    choose more ML compute instances for training than available S3 objects": ``S3DataSource``), which
    ``lambdas.domain.shards.MIN_SHARDS`` guarantees up to the largest allowed world."""
    if config.training_instance_count == 1:
        return "File", "FullyReplicated"
    return "FastFile", "ShardedByS3Key" if channel == "train" else "FullyReplicated"


def training_job_parameters(*, config: Config, role_arn: str, image: str, bucket_name: str, key_arn: str,
                            code: s3_assets.Asset, pretrained: s3_assets.Asset | None) -> dict:
    resources = {"InstanceType": config.training_instance_type, "InstanceCount": config.training_instance_count,
                 "VolumeSizeInGB": config.training_volume_gb}
    if has_volume_key(config):
        resources["VolumeKmsKeyId"] = key_arn
    stopping = {"MaxRuntimeInSeconds": config.training_max_runtime_s}
    if config.training_spot:
        stopping["MaxWaitTimeInSeconds"] = config.spot_max_wait_s

    def channel(name: str, uri: dict, data_type: str, mode: str = "File", distribution="FullyReplicated") -> dict:
        return {"ChannelName": name, "InputMode": mode, "DataSource": {"S3DataSource": {
            "S3DataType": data_type, "S3DataDistributionType": distribution, **uri}}}

    return {
        "TrainingJobName.$":
            f"States.Format('{wiring.resource_prefix(config.stage)}{{}}-{{}}', $$.State.RetryCount, States.UUID())",
        "RoleArn": role_arn,
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File"},
        # the SDK's script-mode contract; values JSON-encoded as the SDK does, the request's own merged in
        "HyperParameters.$": "States.JsonMerge($.request.hyperparameters, $.code, false)",
        "InputDataConfig": [
            *(channel(name, {"S3Uri.$": f"$.dataset.shards.{name}"}, "S3Prefix", *shard_input(config, name))
              for name in SHARDED_CHANNELS),
            channel("benchmark", {"S3Uri.$": "$.dataset.channels.benchmark"}, "ManifestFile"),
            channel(wiring.TRAINING_CODE_CHANNEL, {"S3Uri": code.s3_object_url}, "S3Prefix"),
            *([channel(PRETRAINED_CHANNEL, {"S3Uri": pretrained.s3_object_url}, "S3Prefix")] if pretrained else []),
        ],
        "OutputDataConfig": {
            "S3OutputPath.$": f"States.Format('s3://{bucket_name}/{layout.MODELS}{{}}/', $.request.run_id)",
            "KmsKeyId": key_arn,
        },
        "CheckpointConfig": {
            "S3Uri.$": f"States.Format('s3://{bucket_name}/{layout.CHECKPOINTS}{{}}/', $.request.run_id)",
        },
        "ResourceConfig": resources,
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": config.training_spot,
        "EnableNetworkIsolation": True,
        "EnableInterContainerTrafficEncryption": True,
        "Tags": [{"Key": "run_id", "Value.$": "$.request.run_id"}],
    }


def code_hyperparameters(code: s3_assets.Asset, region: str) -> dict:
    """What SageMaker's PyTorch container reads to find and run the script (JSON-encoded, as the SDK writes them)."""
    submit_directory = f"/opt/ml/input/data/{wiring.TRAINING_CODE_CHANNEL}/{code.s3_object_key}"
    return {
        "sagemaker_program": json.dumps("train.py"),
        "sagemaker_submit_directory": json.dumps(submit_directory),
        "sagemaker_region": json.dumps(region),
        "sagemaker_container_log_level": "20",
    }


def distribution_hyperparameters(config: Config) -> dict:
    """What the SageMaker SDK's PyTorch estimator adds for ``distribution={"torch_distributed": {"enabled": True}}``
    (``PyTorch._pytorch_distribution_configuration``, JSON-encoded): the container then starts train.py through
    torchrun, one rank per GPU on every instance. Given on GPU instance types, the ones the SDK allows it on."""
    if not is_gpu(config.training_instance_type):
        return {}
    return {"sagemaker_torch_distributed_enabled": json.dumps(True),
            "sagemaker_instance_type": json.dumps(config.training_instance_type)}


class TrainingJob(Construct):
    """The state and the permissions the state machine needs to run it."""

    def __init__(self, scope: Construct, construct_id: str, *, config: Config, role: iam.IRole, image: str,
                 bucket_name: str, key: kms.IKey, code: s3_assets.Asset, pretrained: s3_assets.Asset | None):
        super().__init__(scope, construct_id)
        self.code_hyperparameters = {**code_hyperparameters(code, Stack.of(self).region),
                                     **distribution_hyperparameters(config)}
        parameters = training_job_parameters(
            config=config, role_arn=role.role_arn, image=image, bucket_name=bucket_name, key_arn=key.key_arn,
            code=code, pretrained=pretrained)
        self.role = role
        self.key = key
        self.stage = config.stage
        self.state = sfn.CustomState(self, wiring.TRAIN_STATE, state_json={
            "Type": "Task",
            "Resource": RESOURCE,
            "Parameters": parameters,
            "ResultSelector": {"TrainingJobName.$": "$.TrainingJobName", "ModelArtifacts.$": "$.ModelArtifacts"},
            "ResultPath": "$.training",
        })

    def grant_run(self, principal: iam.IGrantable) -> None:
        stack = Stack.of(self)
        jobs = stack.format_arn(service="sagemaker", resource="training-job",
                                resource_name=f"{wiring.resource_prefix(self.stage)}*")
        principal.grant_principal.add_to_principal_policy(iam.PolicyStatement(
            actions=["sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob",
                     "sagemaker:AddTags"],
            resources=[jobs]))
        principal.grant_principal.add_to_principal_policy(iam.PolicyStatement(  # on "*" as AWS documents it
            actions=["sagemaker:ListTags"], resources=["*"]))
        principal.grant_principal.add_to_principal_policy(iam.PolicyStatement(
            actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
            resources=[stack.format_arn(service="events", resource="rule", resource_name=EVENTS_RULE)]))
        principal.grant_principal.add_to_principal_policy(iam.PolicyStatement(
            actions=["iam:PassRole"], resources=[self.role.role_arn],
            conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}))
        principal.grant_principal.add_to_principal_policy(iam.PolicyStatement(
            actions=["kms:CreateGrant", "kms:DescribeKey"], resources=[self.key.key_arn],
            conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}}))
