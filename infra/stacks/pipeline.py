"""Training pipeline: a Step Functions state machine from dataset to a serving endpoint, with a quality gate.

ReadRequest -> PrepareDataset (Lambda) -> Train (SageMaker, RUN_JOB) -> Evaluate (Lambda) -> PassesGate
-> Deploy (Lambda) -> EndpointStatus (Lambda) -> EndpointReady (else WaitForEndpoint, check again)
-> NotifyDeployed. Every task retries what is transient and catches everything else into
NotifyFailure -> PipelineFailed, so a failure notifies and deploys nothing. State names come from ``infra.wiring``.
"""

from __future__ import annotations

import json
from pathlib import Path

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from infra import images, wiring
from infra.components.access import allow_objects
from infra.components.buckets import bucket_name
from infra.components.function import ServiceFunction
from infra.components.nag import acknowledge
from infra.components.retention import retention
from infra.components.training import TrainingJob, has_volume_key
from infra.config import Config
from lambdas.domain import layout

LAMBDA_TRANSIENT = ["Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
                    "Lambda.TooManyRequestsException", "TransientError"]
"""Lambda's own failures and the handlers' ``lambdas.aws.TransientError``; other errors are final."""
WAIT_SECONDS = 30
REQUEST_DEFAULTS = {"hyperparameters": {}}


class TrainingPipelineStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: Config, key: kms.IKey, topic: sns.ITopic,
                 training_code: Path, pretrained_weights: Path | None, **kwargs):
        super().__init__(scope, construct_id, **kwargs)
        stage = config.stage
        data_bucket = bucket_name(wiring.DATA, stage)
        inference_bucket = bucket_name(wiring.INFERENCE, stage)
        self.config, self.key, self.topic = config, key, topic
        self.images = images.PyTorchImages(self)
        self.code = s3_assets.Asset(self, "TrainingCode", path=str(training_code))
        self.pretrained = (s3_assets.Asset(self, "PretrainedWeights", path=str(pretrained_weights))
                           if pretrained_weights else None)
        self.training_role = self._training_role()
        self.model_role = self._model_role()
        endpoint_name = wiring.endpoint_name(config.stage)
        parameter_name = wiring.endpoint_parameter_name(config.stage)

        def function(spec: wiring.Function, environment: dict) -> ServiceFunction:
            return ServiceFunction(self, spec, config=config, key=key, alarm_topic=topic, environment=environment)

        self.prepare = function(wiring.PREPARE_DATASET, {wiring.ENV_DATA_BUCKET: data_bucket})
        allow_objects(self.prepare.function, wiring.DATA, stage, key, read=[layout.PROCESSED], list_=[layout.PROCESSED],
                      write=[layout.MANIFESTS])
        self.evaluate = function(wiring.EVALUATE_MODEL, {
            wiring.ENV_DATA_BUCKET: data_bucket,
            wiring.ENV_QUALITY_GATE: json.dumps(dict(config.quality_gate), sort_keys=True),
        })
        allow_objects(self.evaluate.function, wiring.DATA, stage, key, read=[layout.MODELS], write=[layout.REPORTS])
        self.deploy = function(wiring.DEPLOY_MODEL, {
            wiring.ENV_SAGEMAKER_ROLE_ARN: self.model_role.role_arn,
            wiring.ENV_KMS_KEY_ARN: key.key_arn,
            wiring.ENV_INFERENCE_IMAGE: self.images.inference(config.endpoint_mode, config.endpoint_instance_type),
            wiring.ENV_ENDPOINT_NAME: endpoint_name,
            wiring.ENV_ENDPOINT_MODE: config.endpoint_mode,
            wiring.ENV_SERVERLESS_MEMORY_MB: str(config.serverless_memory_mb),
            wiring.ENV_SERVERLESS_MAX_CONCURRENCY: str(config.serverless_max_concurrency),
            wiring.ENV_ENDPOINT_INSTANCE_TYPE: config.endpoint_instance_type,
            wiring.ENV_ASYNC_OUTPUT_URI: f"s3://{inference_bucket}/{wiring.ASYNC_OUTPUT_PREFIX}",
        })
        self._allow_deploy(self.deploy.function, endpoint_name)
        self.status = function(wiring.ENDPOINT_STATUS, {wiring.ENV_ENDPOINT_PARAMETER: parameter_name})
        self.status.function.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:DescribeEndpoint"],
            resources=[self.format_arn(service="sagemaker", resource="endpoint", resource_name=endpoint_name)]))
        job = f"{wiring.TRAINING_JOB_PREFIX}-*"
        self.status.function.add_to_role_policy(iam.PolicyStatement(  # retiring old deployments
            actions=["sagemaker:ListEndpointConfigs"], resources=["*"]))
        self.status.function.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:ListTags", "sagemaker:DeleteEndpointConfig", "sagemaker:DeleteModel"],
            resources=[self.format_arn(service="sagemaker", resource="endpoint-config", resource_name=job),
                       self.format_arn(service="sagemaker", resource="model", resource_name=job)]))
        self.status.function.add_to_role_policy(iam.PolicyStatement(
            actions=["ssm:PutParameter"],
            resources=[self.format_arn(service="ssm", resource="parameter", resource_name=parameter_name.lstrip("/"))]))

        self.training = TrainingJob(self, "Training", config=config, role=self.training_role,
                                    image=self.images.uri(images.TRAINING_GPU), bucket_name=data_bucket, key=key,
                                    code=self.code, pretrained=self.pretrained)
        self.log_group = logs.LogGroup(self, "PipelineLogs", encryption_key=key,
                                       retention=retention(config.log_retention_days),
                                       removal_policy=RemovalPolicy.RETAIN)
        self.state_machine = sfn.StateMachine(
            self, wiring.STATE_MACHINE_ID,
            definition_body=sfn.DefinitionBody.from_chainable(self._definition()),
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
            tracing_enabled=True,
            timeout=Duration.seconds(config.training_max_runtime_s + config.spot_max_wait_s + 6 * 3600),
            comment=f"cxr {config.stage}: dataset -> training -> quality gate -> endpoint",
        )
        self.training.grant_run(self.state_machine)
        self.state_machine.add_to_role_policy(iam.PolicyStatement(  # publishing to the KMS-encrypted topic
            actions=["kms:Decrypt", "kms:GenerateDataKey"], resources=[key.key_arn]))
        self._acknowledge()

    def _definition(self) -> sfn.IChainable:
        scope = Construct(self, "States")  # state names are construct ids: keep them apart from the functions'
        failed = sfn.Fail(scope, wiring.FAILED_STATE, error="PipelineFailed",
                          cause="A step failed; see the NotifyFailure message and the execution history")
        notify_failure = tasks.SnsPublish(
            scope, wiring.NOTIFY_FAILURE_STATE, topic=self.topic,
            subject=f"cxr {self.config.stage}: training pipeline failed",
            message=sfn.TaskInput.from_object({"outcome": "failed", "request": sfn.JsonPath.object_at("$.request"),
                                               "error": sfn.JsonPath.object_at("$.error")}),
            result_path=sfn.JsonPath.DISCARD,
        )
        notify_failure.add_retry(errors=["SNS.SdkClientException", "SNS.InternalErrorException", "States.Timeout"],
                                 max_attempts=3, interval=Duration.seconds(5), backoff_rate=2)
        notify_failure.add_catch(failed, result_path="$.notify_error")
        notify_failure.next(failed)

        def guard(task: sfn.TaskStateBase | sfn.CustomState, retry: dict | None = None):
            task.add_retry(**(retry or {"errors": LAMBDA_TRANSIENT, "max_attempts": 3,
                                        "interval": Duration.seconds(5), "backoff_rate": 2}))
            task.add_catch(notify_failure, errors=["States.ALL"], result_path="$.error")
            return task

        def invoke(state: str, function: ServiceFunction, payload: dict, result_path: str) -> tasks.LambdaInvoke:
            return guard(tasks.LambdaInvoke(
                scope, state, lambda_function=function.function, payload=sfn.TaskInput.from_object(payload),
                payload_response_only=True, retry_on_service_exceptions=False, result_path=result_path,
            ))

        read_request = sfn.Pass(scope, wiring.READ_REQUEST_STATE, parameters={
            "request.$": f"States.JsonMerge(States.StringToJson('{json.dumps(REQUEST_DEFAULTS)}'), $, false)",
            "code": self.training.code_hyperparameters,
        })
        prepare = invoke(wiring.PREPARE_DATASET_STATE, self.prepare, {
            "run_id": sfn.JsonPath.string_at("$.request.run_id"),
            "dataset": sfn.JsonPath.string_at("$.request.dataset"),
        }, "$.dataset")
        train = guard(self.training.state, {"errors": ["SageMaker.AmazonSageMakerException"], "max_attempts": 3,
                                            "interval": Duration.seconds(60), "backoff_rate": 2})
        artifact = sfn.JsonPath.string_at("$.training.ModelArtifacts.S3ModelArtifacts")
        evaluate = invoke(wiring.EVALUATE_STATE, self.evaluate,
                          {"run_id": sfn.JsonPath.string_at("$.request.run_id"), "model_artifact": artifact},
                          "$.evaluation")
        deploy = invoke(wiring.DEPLOY_STATE, self.deploy, {
            "run_id": sfn.JsonPath.string_at("$.request.run_id"),
            "model_name": sfn.JsonPath.string_at("$.training.TrainingJobName"),
            "model_artifact": artifact,
        }, "$.deployment")
        deploy.add_retry(errors=["EndpointBusy"], max_attempts=20, interval=Duration.seconds(30), backoff_rate=1.5,
                         max_delay=Duration.minutes(5))
        wait = sfn.Wait(scope, wiring.WAIT_STATE, time=sfn.WaitTime.duration(Duration.seconds(WAIT_SECONDS)))
        status = invoke(wiring.ENDPOINT_STATUS_STATE, self.status, {
            "endpoint_name": sfn.JsonPath.string_at("$.deployment.endpoint_name"),
            "endpoint_config_name": sfn.JsonPath.string_at("$.deployment.endpoint_config_name"),
        }, "$.endpoint")
        notify_deployed = guard(tasks.SnsPublish(
            scope, wiring.NOTIFY_DEPLOYED_STATE, topic=self.topic, subject=f"cxr {self.config.stage}: model deployed",
            message=sfn.TaskInput.from_object({
                "outcome": "deployed", "run_id": sfn.JsonPath.string_at("$.request.run_id"),
                "endpoint": sfn.JsonPath.string_at("$.deployment.endpoint_name"),
                "model": sfn.JsonPath.string_at("$.deployment.model_name"),
                "gate": sfn.JsonPath.object_at("$.evaluation.checks"),
            }),
            result_path=sfn.JsonPath.DISCARD,
        ), {"errors": ["SNS.SdkClientException", "SNS.InternalErrorException"], "max_attempts": 3,
            "interval": Duration.seconds(5), "backoff_rate": 2})
        notify_rejected = guard(tasks.SnsPublish(
            scope, wiring.NOTIFY_REJECTED_STATE, topic=self.topic,
            subject=f"cxr {self.config.stage}: model below the quality gate, not deployed",
            message=sfn.TaskInput.from_object({
                "outcome": "rejected", "run_id": sfn.JsonPath.string_at("$.request.run_id"),
                "failures": sfn.JsonPath.list_at("$.evaluation.failures"),
                "report": sfn.JsonPath.string_at("$.evaluation.report_uri"),
            }),
            result_path=sfn.JsonPath.DISCARD,
        ), {"errors": ["SNS.SdkClientException", "SNS.InternalErrorException"], "max_attempts": 3,
            "interval": Duration.seconds(5), "backoff_rate": 2})
        ready = (sfn.Choice(scope, wiring.ENDPOINT_READY_STATE)
                 .when(sfn.Condition.boolean_equals("$.endpoint.ready", True), notify_deployed)
                 .otherwise(wait.next(status)))
        gate = (sfn.Choice(scope, wiring.GATE_STATE)
                .when(sfn.Condition.boolean_equals("$.evaluation.passed", True), deploy.next(status).next(ready))
                .otherwise(notify_rejected.next(sfn.Succeed(scope, wiring.NOT_DEPLOYED_STATE,
                                                            comment="the previous endpoint keeps serving"))))
        # A missing field would otherwise fail the first task's input path with States.Runtime, which no
        # Catch sees: check the request first and fail with a message that names the contract.
        invalid = sfn.Fail(scope, wiring.INVALID_REQUEST_STATE, error="InvalidRequest",
                           cause='the execution input must be {"run_id": "...", "dataset": "...", '
                                 '"hyperparameters": {...} (optional)}')
        complete = sfn.Condition.and_(sfn.Condition.is_present("$.request.run_id"),
                                      sfn.Condition.is_present("$.request.dataset"))
        return read_request.next(sfn.Choice(scope, wiring.VALID_REQUEST_STATE)
                                 .when(complete, prepare.next(train).next(evaluate).next(gate))
                                 .otherwise(invalid))

    def _training_role(self) -> iam.Role:
        """What the training job itself may do: read its data and code, write its model and checkpoints."""
        role = iam.Role(self, wiring.TRAINING_ROLE_ID, assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
                        description="cxr SageMaker training jobs")
        allow_objects(role, wiring.DATA, self.config.stage, self.key,
                      read=[layout.PROCESSED, layout.MANIFESTS, layout.CHECKPOINTS],
                      write=[layout.MODELS, layout.CHECKPOINTS], list_=[layout.CHECKPOINTS])
        assets = [asset for asset in (self.code, self.pretrained) if asset]
        role.add_to_policy(iam.PolicyStatement(  # the code archive (and weights), exactly, in CDK's asset bucket
            actions=["s3:GetObject"],
            resources=[f"arn:{self.partition}:s3:::{asset.s3_bucket_name}/{asset.s3_object_key}" for asset in assets]))
        role.add_to_policy(iam.PolicyStatement(  # S3Prefix channels are listed first, with the object's key as prefix
            actions=["s3:ListBucket"], resources=[f"arn:{self.partition}:s3:::{assets[0].s3_bucket_name}"],
            conditions={"StringEquals": {"s3:prefix": [asset.s3_object_key for asset in assets]}}))
        self._allow_container(role, images.TRAINING_GPU, wiring.TRAINING_LOG_GROUP)
        role.add_to_policy(iam.PolicyStatement(  # SageMaker encrypts the job's outputs with the key as this role
            actions=["kms:Encrypt"], resources=[self.key.key_arn]))
        if has_volume_key(self.config):
            # "If you specify a volume KMS key in the resource configuration of your training job, add
            # kms:CreateGrant" to the execution role (SageMaker Developer Guide, CreateTrainingJob API:
            # Execution Role Permissions); SageMaker creates the grant for the job's EBS volume.
            role.add_to_policy(iam.PolicyStatement(
                actions=["kms:CreateGrant"], resources=[self.key.key_arn],
                conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}}))
        return role

    def _model_role(self) -> iam.Role:
        """What a deployed model may do: read its artifact (and write asynchronous results)."""
        role = iam.Role(self, wiring.MODEL_ROLE_ID, assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
                        description="cxr SageMaker models and endpoints")
        allow_objects(role, wiring.DATA, self.config.stage, self.key, read=[layout.MODELS])
        allow_objects(role, wiring.INFERENCE, self.config.stage, self.key, write=[wiring.ASYNC_OUTPUT_PREFIX])
        gpu = self.config.endpoint_mode != "serverless" and images.is_gpu_instance(self.config.endpoint_instance_type)
        self._allow_container(role, images.INFERENCE_GPU if gpu else images.INFERENCE_CPU,
                              wiring.endpoint_log_group(wiring.endpoint_name(self.config.stage)))
        role.add_to_policy(iam.PolicyStatement(  # asynchronous results are encrypted with the key as this role
            actions=["kms:Encrypt"], resources=[self.key.key_arn]))
        return role

    def _allow_container(self, role: iam.Role, column: str, log_group: str) -> None:
        """Pull the image, write the container's log group (both ARN shapes CloudWatch Logs authorizes) and metrics."""
        role.add_to_policy(iam.PolicyStatement(
            actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
            resources=[self.images.repository_arn(column)]))
        role.add_to_policy(iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"]))
        role.add_to_policy(iam.PolicyStatement(
            actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            resources=[self.format_arn(service="logs", resource="log-group", resource_name=name,
                                       arn_format=ArnFormat.COLON_RESOURCE_NAME) for name in (log_group,
                                                                                              f"{log_group}:*")]))
        role.add_to_policy(iam.PolicyStatement(
            actions=["cloudwatch:PutMetricData"], resources=["*"],
            conditions={"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "aws/sagemaker/*"]}}))

    def _allow_deploy(self, function, endpoint_name: str) -> None:
        prefix = f"{wiring.TRAINING_JOB_PREFIX}-*"
        function.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:CreateModel", "sagemaker:CreateEndpointConfig", "sagemaker:AddTags",
                     "sagemaker:DescribeEndpointConfig", "sagemaker:DescribeModel"],
            resources=[self.format_arn(service="sagemaker", resource="model", resource_name=prefix),
                       self.format_arn(service="sagemaker", resource="endpoint-config", resource_name=prefix)]))
        function.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint", "sagemaker:DeleteEndpoint",
                     "sagemaker:DescribeEndpoint", "sagemaker:AddTags"],
            resources=[self.format_arn(service="sagemaker", resource="endpoint", resource_name=endpoint_name),
                       self.format_arn(service="sagemaker", resource="endpoint-config", resource_name=prefix)]))
        function.add_to_role_policy(iam.PolicyStatement(
            actions=["iam:PassRole"], resources=[self.model_role.role_arn],
            conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}))
        function.add_to_role_policy(iam.PolicyStatement(
            actions=["kms:CreateGrant", "kms:DescribeKey"], resources=[self.key.key_arn],
            conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}}))

    def _acknowledge(self) -> None:
        machine_role = self.state_machine.role
        acknowledge(machine_role, "Step Functions log delivery (logs:*LogDelivery*, DescribeResourcePolicies) and "
                    "X-Ray have no resource-level permissions; sagemaker:ListTags is on * in AWS's documented policy "
                    "for createTrainingJob.sync.", "AwsSolutions-IAM5[Resource::*]")
        acknowledge(machine_role, "CDK's Lambda task grant includes the function's versions and aliases (ARN:*) of "
                    "exactly these functions.", *(
                        f"AwsSolutions-IAM5[Resource::<{self.resolve(self.get_logical_id(f.function.node.default_child))}.Arn>:*]"
                        for f in (self.prepare, self.evaluate, self.deploy, self.status)))
        arn = "arn:<AWS::Partition>:{service}:<AWS::Region>:<AWS::AccountId>:{resource}"
        job = f"{wiring.TRAINING_JOB_PREFIX}-*"
        acknowledge(machine_role, "Training job names are generated per attempt (unique, as SageMaker requires); the "
                    "cxr- prefix scopes them to this project.",
                    f"AwsSolutions-IAM5[Resource::{arn.format(service='sagemaker', resource='training-job/' + job)}]")
        acknowledge(self.deploy.role, "Models and endpoint configurations are named after each run's training job; the "
                    "cxr- prefix scopes them to this project.",
                    *(f"AwsSolutions-IAM5[Resource::{arn.format(service='sagemaker', resource=kind + '/' + job)}]"
                      for kind in ("model", "endpoint-config")))
        acknowledge(self.status.role, "sagemaker:ListEndpointConfigs has no resource-level permissions; deletion is "
                    "limited to cxr- models and configurations, and the function deletes only those tagged with this "
                    "stage's endpoint.", "AwsSolutions-IAM5[Resource::*]",
                    *(f"AwsSolutions-IAM5[Resource::{arn.format(service='sagemaker', resource=kind + '/' + job)}]"
                      for kind in ("model", "endpoint-config")))
        endpoint_logs = wiring.endpoint_log_group(wiring.endpoint_name(self.config.stage))
        for role, group in ((self.training_role, wiring.TRAINING_LOG_GROUP), (self.model_role, endpoint_logs)):
            acknowledge(role, "SageMaker writes one log stream per job or instance into its fixed log group.",
                        f"AwsSolutions-IAM5[Resource::{arn.format(service='logs', resource=f'log-group:{group}:*')}]")
        reason_ecr = ("ecr:GetAuthorizationToken has no resource-level permissions; image pulls themselves are "
                      "scoped to the one PyTorch repository.")
        reason_metrics = ("cloudwatch:PutMetricData has no resource-level permissions; it is limited to SageMaker's "
                          "namespaces by condition.")
        for role in (self.training_role, self.model_role):
            acknowledge(role, f"{reason_ecr} {reason_metrics}", "AwsSolutions-IAM5[Resource::*]")

