"""The offline cloud: the deployed system's resources on moto, with real local execution behind them.

Names, prefixes, triggers and function environments come from ``infra/wiring.py`` and the
deployment configuration (``infra/config.py``), the same sources the CDK stacks read.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from cxr.local import functions, hooks, pipeline, removal_events
from cxr.local.endpoints import AsyncRequest, LocalEndpoints
from cxr.local.names import ACCOUNT, REGION, LocalNames
from cxr.local.training import LocalTrainingJobs
from cxr.local.transforms import LocalTransformJobs
from infra import wiring
from infra.config import Config
from infra.version import code_version
from lambdas import pseudonyms

REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass
class LocalCloud:
    """Provisioned resources plus the executors the moto hooks call (see :mod:`cxr.local.hooks`)."""

    config: Config
    workdir: Path
    names: LocalNames = field(init=False)
    kms_key_arn: str = ""
    state_machine_arn: str = ""
    dead_letter_queues: dict[str, str] = field(default_factory=dict)
    environments: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # moto's ASL engine logs an ERROR for every Choice rule that tests an absent path (IsPresent false,
        # as AWS evaluates it): noise on the terminal; real failures are in the execution history.
        logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)
        self.names = LocalNames(self.config.stage)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.training_jobs = LocalTrainingJobs(self.workdir)
        self.lambda_log = (self.workdir / "lambda.log").open("a", buffering=1)
        """Every function's output, as CloudWatch Logs would hold it."""
        self.endpoints = LocalEndpoints(self.workdir)
        self.transform_jobs = LocalTransformJobs(self.endpoints)

    # --- provisioning -------------------------------------------------------------------------
    def provision(self) -> None:
        """Create buckets, tables, topic, queues, roles, functions, S3 triggers and the model package group, as the
        stacks do."""
        s3, iam = boto3.client("s3", region_name=REGION), boto3.client("iam", region_name=REGION)
        self.kms_key_arn = boto3.client("kms", region_name=REGION).create_key(Description="cxr local")["KeyMetadata"][
            "Arn"
        ]
        for bucket in wiring.BUCKETS.values():
            name = self.names.bucket(bucket.role)
            # as infra/components/buckets.py: Object Lock on the predictions' bucket, no default retention
            s3.create_bucket(Bucket=name, **({"ObjectLockEnabledForBucket": True}
                                             if bucket.role == wiring.PREDICTIONS_BUCKET else {}))
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
            s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={
                "Rules": [self._default_encryption(bucket.role)]})
        ddb = boto3.client("dynamodb", region_name=REGION)
        for table in wiring.TABLES.values():
            indexes = [{"IndexName": index.name, "KeySchema": _key_schema(index.partition_key, index.sort_key),
                        "Projection": {"ProjectionType": "ALL"}} for index in table.indexes]
            attributes = {a["AttributeName"] for schema in [_key_schema(table.partition_key, table.sort_key)]
                          + [i["KeySchema"] for i in indexes] for a in schema}
            ddb.create_table(
                TableName=self.names.table(table),
                KeySchema=_key_schema(table.partition_key, table.sort_key),
                AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in sorted(attributes)],
                BillingMode="PAY_PER_REQUEST",
                **({"GlobalSecondaryIndexes": indexes} if indexes else {}),
            )
        boto3.client("sns", region_name=REGION).create_topic(Name=self.names.topic)
        # the offline cloud's own pseudonym key, as the storage stack makes one (lambdas/pseudonyms.py)
        boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name=wiring.PSEUDONYM_SECRET_NAME.format(stage=self.config.stage), KmsKeyId=self.kms_key_arn,
            SecretString=secrets.token_urlsafe(48))
        pseudonyms.forget()  # functions of an earlier cloud in this process cached that one's key
        trust = json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": ["lambda.amazonaws.com", "sagemaker.amazonaws.com",
                                                          "states.amazonaws.com"]},
             "Action": "sts:AssumeRole"}]})
        for arn in self.names.roles:  # one per principal: the IAM trace tells them apart by it
            iam.create_role(RoleName=arn.rsplit("/", 1)[1], AssumeRolePolicyDocument=trust)
        for function in wiring.deployed_functions(self.config.endpoint_mode):
            self._create_function(function)
        self._create_triggers()
        boto3.client("sagemaker", region_name=REGION).create_model_package_group(  # as the pipeline stack does
            ModelPackageGroupName=wiring.model_package_group(self.config.stage))

    def _default_encryption(self, role: str) -> dict[str, Any]:
        """As ``infra/components/buckets.py`` encrypts: SSE-KMS with the stage's key and S3 Bucket Keys, except
        the access-log bucket (SSE-S3, the only encryption S3 log delivery writes to). Under SSE-KMS, objects
        get ETags that are not MD5 digests (the ETag hook in :mod:`cxr.local.hooks`), as on AWS."""
        if role == wiring.ACCESS_LOGS:
            return {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
        return {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": self.kms_key_arn},
                "BucketKeyEnabled": True}

    def environment(self, function: wiring.Function) -> dict[str, str]:
        """The values the stacks give each environment variable, for local resources."""
        config = self.config
        values = {
            wiring.ENV_DATA_BUCKET: self.names.bucket(wiring.DATA),
            wiring.ENV_INFERENCE_BUCKET: self.names.bucket(wiring.INFERENCE),
            wiring.ENV_PREDICTIONS_TABLE: self.names.table(wiring.PREDICTIONS_TABLE),
            wiring.ENV_IDEMPOTENCY_TABLE: self.names.table(wiring.IDEMPOTENCY_TABLE),
            wiring.ENV_ENDPOINT_PARAMETER: wiring.endpoint_parameter_name(config.stage),
            wiring.ENV_EXPLAIN_REFERRALS: "true" if config.explain_referrals else "false",
            wiring.ENV_DICOM_SR_OUTPUT: "true" if config.dicom_sr_output else "false",
            wiring.ENV_QUALITY_GATE: json.dumps(dict(config.quality_gate)),
            wiring.ENV_SAGEMAKER_ROLE_ARN: self.names.model_role_arn,
            wiring.ENV_KMS_KEY_ARN: self.kms_key_arn,
            wiring.ENV_INFERENCE_IMAGE: "local/cxr-inference:latest",
            wiring.ENV_ENDPOINT_NAME: wiring.endpoint_name(config.stage),
            wiring.ENV_ENDPOINT_MODE: config.endpoint_mode,
            wiring.ENV_SERVERLESS_MEMORY_MB: str(config.serverless_memory_mb),
            wiring.ENV_SERVERLESS_MAX_CONCURRENCY: str(config.serverless_max_concurrency),
            wiring.ENV_ENDPOINT_INSTANCE_TYPE: config.endpoint_instance_type,
            wiring.ENV_ASYNC_OUTPUT_URI: f"s3://{self.names.bucket(wiring.INFERENCE)}/{wiring.ASYNC_OUTPUT_PREFIX}",
            wiring.ENV_RESOURCE_PREFIX: wiring.resource_prefix(config.stage),
            wiring.ENV_SOURCE_STATE_TABLE: self.names.table(wiring.SOURCE_STATE_TABLE),
            wiring.ENV_CODE_VERSION: code_version(),
            wiring.ENV_PREDICTION_RETENTION_DAYS: str(config.retention_days),
            wiring.ENV_REVIEW_TASKS_TABLE: self.names.table(wiring.REVIEW_TASKS_TABLE),
            wiring.ENV_REVIEW_SAMPLE_RATE: str(config.review_sample_rate),
            wiring.ENV_REVIEW_DATASET: config.review_dataset,
            wiring.ENV_PSEUDONYM_SECRET: wiring.PSEUDONYM_SECRET_NAME.format(stage=config.stage),
            wiring.ENV_MODEL_PACKAGE_GROUP: wiring.model_package_group(config.stage),
            wiring.ENV_APPROVAL_MODE: config.approval,
            wiring.ENV_CHAMPION_MARGIN: str(config.champion_margin),
            wiring.ENV_RESCORE_DAYS: str(config.rescore_days),
        }
        env = {name: values[name] for name in function.environment}
        env |= {"POWERTOOLS_SERVICE_NAME": function.service, "POWERTOOLS_METRICS_NAMESPACE": wiring.METRICS_NAMESPACE,
                "POWERTOOLS_LOG_LEVEL": wiring.LOG_LEVEL}
        return env

    def _create_function(self, function: wiring.Function) -> None:
        """Registered in moto so S3 triggers and Step Functions invoke it; the hooks run its real handler."""
        client = boto3.client("lambda", region_name=REGION)
        client.create_function(
            FunctionName=self.names.function(function),
            Runtime="python3.12",
            Role=self.names.function_role_arn(function),
            Handler=function.handler,
            Code={"ZipFile": stand_in_code()},
            Timeout=function.timeout_s,
            MemorySize=function.memory_mb,
            Environment={"Variables": self.environment(function)},
        )
        if function.asynchronous:  # bounded retries and age, then a dead-letter queue
            sqs = boto3.client("sqs", region_name=REGION)
            queue_url = sqs.create_queue(QueueName=self.names.dead_letter_queue(function))["QueueUrl"]
            self.dead_letter_queues[self.names.function(function)] = sqs.get_queue_attributes(
                QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            client.put_function_event_invoke_config(
                FunctionName=self.names.function(function),
                MaximumRetryAttempts=wiring.ASYNC_RETRIES,
                MaximumEventAgeInSeconds=wiring.MAX_EVENT_AGE_S,
            )

    def _create_triggers(self) -> None:
        by_bucket: dict[str, list[dict]] = {}
        for function in wiring.FUNCTIONS.values():
            if function.trigger is None:
                continue
            by_bucket.setdefault(function.trigger.bucket, []).extend(
                {
                    "Id": function.id + event.split(":")[1],  # PreprocessObjectCreated, ...
                    "LambdaFunctionArn": self.names.function_arn(function),
                    "Events": [event],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": function.trigger.prefix}]}},
                }
                for event in function.trigger.events
            )
        s3 = boto3.client("s3", region_name=REGION)
        for role, configurations in by_bucket.items():
            s3.put_bucket_notification_configuration(
                Bucket=self.names.bucket(role),
                NotificationConfiguration={"LambdaFunctionConfigurations": configurations},
            )

    def install_pipeline(self, synthesized: pipeline.Synthesized) -> str:
        """Create the synthesized training state machine on moto; returns its ARN."""
        pipeline.publish_file_assets(synthesized, ACCOUNT, REGION)
        boto3.client("lambda", region_name=REGION).create_function(
            # stands in for the state machine's SageMaker integration, so it acts as the state machine's role
            FunctionName=self.names.training_task, Runtime="python3.12", Role=self.names.state_machine_role_arn,
            Handler="cxr.local.training_task.handler", Code={"ZipFile": stand_in_code()}, Timeout=900,
        )
        values = pipeline.reference_values(synthesized, self.names, ACCOUNT, REGION, self.kms_key_arn)
        definition = pipeline.definition(synthesized, values, self.names.training_task_arn)
        machine = boto3.client("stepfunctions", region_name=REGION).create_state_machine(
            name=self.names.state_machine, definition=definition, roleArn=self.names.state_machine_role_arn
        )
        self.state_machine_arn = machine["stateMachineArn"]
        return self.state_machine_arn

    # --- executors the moto hooks call ----------------------------------------------------------
    def run_function(self, function: Any, event: Any) -> tuple[Any, str | None]:
        stand_in = function.function_name == self.names.training_task
        return functions.run(
            function.handler,
            event,
            dict(function.environment_vars),
            function.function_name,
            self.lambda_log,
            memory_mb=int(function.memory_size),
            timeout_s=int(function.timeout),
            exclusive=not stand_in,
            principal=function.role,
            runtime=not stand_in,
        )

    def dead_letter_queue(self, function: Any) -> str | None:
        return self.dead_letter_queues.get(function.function_name)

    def start_training_job(self, job: Any) -> None:
        self.training_jobs.start(job)

    def stop_training_job(self, job: Any) -> None:
        self.training_jobs.stop(job)

    def start_transform_job(self, job: Any) -> None:
        self.transform_jobs.start(job)

    def invoke_endpoint(self, endpoint_name: str, body: bytes, content_type: str, accept: str) -> tuple[bytes, str]:
        return self.endpoints.invoke(endpoint_name, body, content_type, accept)

    def invoke_endpoint_async(self, request: AsyncRequest) -> tuple[str, str]:
        return self.endpoints.invoke_async(request)


def _key_schema(partition_key: str, sort_key: str | None) -> list[dict[str, str]]:
    return [{"AttributeName": partition_key, "KeyType": "HASH"}] + (
        [{"AttributeName": sort_key, "KeyType": "RANGE"}] if sort_key else [])


def stand_in_code() -> bytes:
    """The zip moto requires to create a function; the hooks run the handler from the project instead."""
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("README.txt", "the offline cloud runs this function's handler from the project itself")
    return code.getvalue()


def start(config: Config, workdir: Path):
    """Context manager: moto in this process, hooks installed, resources provisioned."""
    from contextlib import contextmanager

    from moto import mock_aws

    @contextmanager
    def running():
        cloud = LocalCloud(config=config, workdir=workdir)
        try:
            with (functions.environment_applied(dict.fromkeys(REGION_VARIABLES, REGION)),  # as Lambda sets them
                  mock_aws(config={"stepfunctions": {"execute_state_machine": True}}), hooks.installed(cloud),
                  removal_events.installed(), functions.routed_stdout()):
                cloud.provision()
                yield cloud
        finally:
            cloud.lambda_log.close()

    return running()
