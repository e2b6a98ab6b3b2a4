"""Training pipeline: a Step Functions state machine from dataset to a serving endpoint, with a quality gate.

ReadRequest -> RequestComplete (else NotifyInvalidRequest -> InvalidRequest) -> ApplyDefaults -> PrepareDataset
(Lambda) -> PackShards (a Map state: the PackShard Lambda per packing item) -> Train (SageMaker, RUN_JOB; a
transient failure waits and runs again) -> Evaluate (Lambda) -> Register
(Lambda: a model package in the stage's group, approved only past the minimums and the champion gate) -> PassesGate
(approved?) -> Deploy (Lambda) -> EndpointStatus (Lambda) -> EndpointReady (else WaitForEndpoint, check again)
-> StartRescore (Lambda; rescore_days > 0: a Batch Transform job, waited for by RescoreStatus) -> NotifyDeployed.
With endpoint_mode=lambda, PassesGate -> StartRescore -> ScoreRecent (a Map state: the RescoreBatch Lambda per
batch of recent uploads) -> RescoreStatus -> NotifyDeployed. Every task retries what is transient and catches
everything else into NotifyFailure -> PipelineFailed, so a failure notifies and deploys nothing (a re-score's
failure is reported in NotifyDeployed). State names come from ``infra.wiring``.
"""

from __future__ import annotations

import json
from pathlib import Path

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from infra import images, wiring
from infra.components.access import allow_objects, allow_secret
from infra.components.buckets import bucket_name
from infra.components.function import ServiceFunction
from infra.components.nag import acknowledge
from infra.components.packing import allow_pack_shards, pack_shards
from infra.components.retention import retention
from infra.components.serving import serve_in_function
from infra.components.tables import allow_items
from infra.components.training import TrainingJob, has_volume_key
from infra.config import Config
from infra.version import code_version
from lambdas.domain import layout

LAMBDA_TRANSIENT = ["Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
                    "Lambda.TooManyRequestsException", "TransientError"]
"""Lambda's own failures and the handlers' ``lambdas.aws.TransientError``; other errors are final."""
WAIT_SECONDS = 30
RESCORE_CONCURRENCY = 10
"""Re-score batches at once (endpoint_mode=lambda): 10 of the account's Lambda concurrency (1,000 by default), so
uploads keep being predicted while a run re-scores."""
REQUEST_DEFAULTS = {"hyperparameters": {}}
"""Merged under the execution input by ``ApplyDefaults``: a JSON value in the definition. Inside an intrinsic's
string literal AWS reserves ``'{}\\`` (unescaped, the definition is refused: Step Functions Developer Guide,
"Reserved characters in intrinsic functions"), and moto's engine fails on the escaped form."""
INVALID_REQUEST_CAUSE = ('the execution input must be {"run_id": "...", "dataset": "...", '
                         '"hyperparameters": {"name": "value", ...} (optional)}')
TRAINING_RETRIES = 3
TRAINING_RETRY_SECONDS = 120
TRANSIENT_TRAINING_CAUSES = ("ThrottlingException", "Rate exceeded", "ServiceUnavailable", "InternalFailure",
                             "InternalServerError", "CapacityError")
"""What a transient Train failure's cause says: SageMaker's error codes for throttling and service faults
(reported as ``SageMaker.AmazonSageMakerException``, the name validation errors share), and the failure
reasons of a job SageMaker could not run for want of capacity or its own fault (``States.TaskFailed``)."""


def _request_rules() -> list[tuple[sfn.Condition, bool]]:
    """RequestComplete's rules in order, each with whether a match is a valid request.

    Valid: ``run_id`` and ``dataset`` strings, ``hyperparameters`` absent or an object. A type test on a
    missing path is itself an error on AWS, so each rule tests only what earlier rules proved present
    (rules are taken in order; nothing here relies on ``And``/``Or`` stopping early). Choice rules have no
    object test: an object is what is neither null, string, number, boolean nor a list with a first item.
    An empty list passes (nothing in the Choice language sees it) and fails at Train's merge.
    """
    run_id, dataset, hyperparameters = "$.request.run_id", "$.request.dataset", "$.request.hyperparameters"
    when = sfn.Condition
    return [
        (when.or_(when.is_not_present(run_id), when.is_not_present(dataset)), False),
        (when.or_(when.is_not_string(run_id), when.is_not_string(dataset)), False),
        (when.is_not_present(hyperparameters), True),
        (when.and_(when.is_not_null(hyperparameters), when.is_not_string(hyperparameters),
                   when.is_not_numeric(hyperparameters), when.is_not_boolean(hyperparameters),
                   when.is_not_present(f"{hyperparameters}[0]")), True),
    ]


def _transient_training_failure() -> sfn.Condition:
    """Train failed for a transient reason (by its cause, which an earlier rule found present), retries left."""
    cause = "$.error.Cause"
    return sfn.Condition.and_(
        sfn.Condition.number_less_than("$.retries.train", TRAINING_RETRIES),
        sfn.Condition.or_(*(sfn.Condition.string_matches(cause, f"*{text}*") for text in TRANSIENT_TRAINING_CAUSES)))


class TrainingPipelineStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: Config, key: kms.IKey, topic: sns.ITopic,
                 training_code: Path, pretrained_weights: Path | None, state_table: dynamodb.ITable, **kwargs):
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

        self.prepare = function(wiring.PREPARE_DATASET, {wiring.ENV_DATA_BUCKET: data_bucket,
                                                         wiring.ENV_SOURCE_STATE_TABLE: state_table.table_name})
        allow_objects(self.prepare.function, wiring.DATA, stage, key, write=[layout.MANIFESTS])
        # the benchmark set: listed before it is read (lambdas/benchmark_set.read)
        allow_objects(self.prepare.function, wiring.DATA, stage, key, read=[layout.BENCHMARKS],
                      list_=[layout.BENCHMARKS])
        allow_items(self.prepare.function, state_table, key, "dynamodb:Query")  # the dataset's current records
        self.pack = function(wiring.PACK_SHARDS, {wiring.ENV_DATA_BUCKET: data_bucket})
        allow_pack_shards(self.pack.function, stage, key)
        self.evaluate = function(wiring.EVALUATE_MODEL, {
            wiring.ENV_DATA_BUCKET: data_bucket,
            wiring.ENV_QUALITY_GATE: json.dumps(dict(config.quality_gate), sort_keys=True),
            wiring.ENV_CODE_VERSION: code_version(),
        })
        allow_objects(self.evaluate.function, wiring.DATA, stage, key, read=[layout.MODELS],
                      write=[layout.REPORTS, layout.SERVING])
        self.model_group = sagemaker.CfnModelPackageGroup(
            self, "ModelPackageGroup", model_package_group_name=wiring.model_package_group(stage),
            model_package_group_description=f"cxr {stage}: every trained model; the approved one approved last serves")
        self.register = function(wiring.REGISTER_MODEL, {
            wiring.ENV_DATA_BUCKET: data_bucket,
            wiring.ENV_MODEL_PACKAGE_GROUP: self.model_group.model_package_group_name,
            wiring.ENV_APPROVAL_MODE: config.approval,
            wiring.ENV_CHAMPION_MARGIN: str(config.champion_margin),
            wiring.ENV_INFERENCE_IMAGE: self.images.uri(images.INFERENCE_CPU),
            wiring.ENV_CODE_VERSION: code_version(),
        })
        allow_objects(self.register.function, wiring.DATA, stage, key, read=[layout.REPORTS], write=[layout.REPORTS])
        self._allow_registry(self.register.function, "CreateModelPackage", "DescribeModelPackage")
        self.register.function.node.add_dependency(self.model_group)
        self.deploy = function(wiring.DEPLOY_MODEL, {
            wiring.ENV_SAGEMAKER_ROLE_ARN: self.model_role.role_arn,
            wiring.ENV_KMS_KEY_ARN: key.key_arn,
            wiring.ENV_INFERENCE_IMAGE: self.images.uri(images.INFERENCE_CPU),  # inference.py runs on the CPU only
            wiring.ENV_ENDPOINT_NAME: endpoint_name,
            wiring.ENV_ENDPOINT_MODE: config.endpoint_mode,
            wiring.ENV_SERVERLESS_MEMORY_MB: str(config.serverless_memory_mb),
            wiring.ENV_SERVERLESS_MAX_CONCURRENCY: str(config.serverless_max_concurrency),
            wiring.ENV_ENDPOINT_INSTANCE_TYPE: config.endpoint_instance_type,
            wiring.ENV_ASYNC_OUTPUT_URI: f"s3://{inference_bucket}/{wiring.ASYNC_OUTPUT_PREFIX}",
            wiring.ENV_CODE_VERSION: code_version(),
        })
        self._allow_deploy(self.deploy.function, endpoint_name)
        self.status = function(wiring.ENDPOINT_STATUS, {wiring.ENV_ENDPOINT_PARAMETER: parameter_name,
                                                        wiring.ENV_RESOURCE_PREFIX: wiring.resource_prefix(stage)})
        self.status.function.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:DescribeEndpoint"],
            resources=[self.format_arn(service="sagemaker", resource="endpoint", resource_name=endpoint_name)]))
        self.status.function.add_to_role_policy(iam.PolicyStatement(  # retiring old deployments
            actions=["sagemaker:ListEndpointConfigs"], resources=["*"]))
        self.status.function.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:ListTags", "sagemaker:DeleteEndpointConfig", "sagemaker:DeleteModel"],
            resources=self._stage_resources("endpoint-config", "model")))
        self.status.function.add_to_role_policy(iam.PolicyStatement(
            actions=["ssm:PutParameter"],
            resources=[self.format_arn(service="ssm", resource="parameter", resource_name=parameter_name.lstrip("/"))]))

        secret_name = wiring.PSEUDONYM_SECRET_NAME.format(stage=stage)  # the uploads' names (source_names.py)
        self.start_rescore = function(wiring.START_RESCORE, {
            wiring.ENV_INFERENCE_BUCKET: inference_bucket, wiring.ENV_RESCORE_DAYS: str(config.rescore_days),
            wiring.ENV_RESOURCE_PREFIX: wiring.resource_prefix(stage), wiring.ENV_PSEUDONYM_SECRET: secret_name,
            wiring.ENV_ENDPOINT_MODE: config.endpoint_mode})
        allow_secret(self.start_rescore.function, self, secret_name)
        # CopyObject: read the upload, write its copy under its name (lambdas/rescore.py says why)
        allow_objects(self.start_rescore.function, wiring.INFERENCE, stage, key, list_=[layout.INCOMING],
                      read=[layout.INCOMING], write=[layout.BATCH_INPUT])
        self.rescore_status = function(wiring.RESCORE_STATUS, {wiring.ENV_INFERENCE_BUCKET: inference_bucket,
                                                               wiring.ENV_DATA_BUCKET: data_bucket})
        allow_objects(self.rescore_status.function, wiring.INFERENCE, stage, key, list_=[layout.BATCH_INPUT],
                      read=[layout.BATCH_OUTPUT, layout.PREDICTIONS])
        allow_objects(self.rescore_status.function, wiring.DATA, stage, key, write=[layout.REPORTS])
        if config.endpoint_mode == "lambda":  # the approved package scores the copies in RescoreBatch
            self.rescore_batch = function(wiring.RESCORE_BATCH, {wiring.ENV_INFERENCE_BUCKET: inference_bucket})
            serve_in_function(self, self.rescore_batch.function, config, key, champion=False)
        else:  # a Batch Transform job does
            self.start_rescore.function.add_to_role_policy(iam.PolicyStatement(
                actions=["sagemaker:CreateTransformJob"], resources=self._stage_resources("transform-job")))
            self.rescore_status.function.add_to_role_policy(iam.PolicyStatement(
                actions=["sagemaker:DescribeTransformJob"], resources=self._stage_resources("transform-job")))

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
        sns_transient = {"errors": ["SNS.SdkClientException", "SNS.InternalErrorException"], "max_attempts": 3,
                         "interval": Duration.seconds(5), "backoff_rate": 2}

        def publish(state: str, subject: str, message: dict) -> tasks.SnsPublish:
            return tasks.SnsPublish(scope, state, topic=self.topic, subject=f"cxr {self.config.stage}: {subject}",
                                    message=sfn.TaskInput.from_object(message), result_path=sfn.JsonPath.DISCARD)

        def failure(error) -> dict:
            return {"outcome": "failed", "request": sfn.JsonPath.object_at("$.request"), "error": error}

        notify_failure = publish(wiring.NOTIFY_FAILURE_STATE, "training pipeline failed",
                                 failure(sfn.JsonPath.object_at("$.error")))
        notify_failure.add_retry(**{**sns_transient, "errors": [*sns_transient["errors"], "States.Timeout"]})
        notify_failure.add_catch(failed, result_path="$.notify_error")
        notify_failure.next(failed)

        def guard(task: sfn.TaskStateBase | sfn.CustomState, retry: dict | None = None, catch: sfn.IChainable = None,
                  caught_at: str = "$.error"):
            task.add_retry(**(retry or {"errors": LAMBDA_TRANSIENT, "max_attempts": 3,
                                        "interval": Duration.seconds(5), "backoff_rate": 2}))
            task.add_catch(catch or notify_failure, errors=["States.ALL"], result_path=caught_at)
            return task

        def lambda_task(state: str, function: ServiceFunction, payload: dict, result_path: str) -> tasks.LambdaInvoke:
            return tasks.LambdaInvoke(
                scope, state, lambda_function=function.function, payload=sfn.TaskInput.from_object(payload),
                payload_response_only=True, retry_on_service_exceptions=False, result_path=result_path,
            )

        def invoke(state: str, function: ServiceFunction, payload: dict, result_path: str) -> tasks.LambdaInvoke:
            return guard(lambda_task(state, function, payload, result_path))

        # The defaults are a JSON value of the definition, merged after the request's shape is checked, so that
        # no intrinsic holds them as a string literal (see REQUEST_DEFAULTS) and no merge meets a non-object.
        read_request = sfn.Pass(scope, wiring.READ_REQUEST_STATE, parameters={
            "request.$": "$", "defaults": REQUEST_DEFAULTS, "code": self.training.code_hyperparameters})
        apply_defaults = sfn.Pass(scope, wiring.APPLY_DEFAULTS_STATE, parameters={
            "request.$": "States.JsonMerge($.defaults, $.request, false)", "code.$": "$.code",
            "retries": {"train": 0}})
        prepare = invoke(wiring.PREPARE_DATASET_STATE, self.prepare, {
            "run_id": sfn.JsonPath.string_at("$.request.run_id"),
            "dataset": sfn.JsonPath.string_at("$.request.dataset"),
        }, "$.dataset")
        pack = pack_shards(scope, self.pack.function, LAMBDA_TRANSIENT)  # a failed item (after retries) fails the run
        pack.add_catch(notify_failure, errors=["States.ALL"], result_path="$.error")
        train = self.training.state
        retry_training = (sfn.Choice(scope, wiring.TRAINING_RETRYABLE_STATE)
                          .when(sfn.Condition.is_not_present("$.error.Cause"), notify_failure)
                          .when(_transient_training_failure(), sfn.Pass(
                              scope, wiring.COUNT_TRAINING_RETRY_STATE, result_path="$.retries",
                              parameters={"train.$": "States.MathAdd($.retries.train, 1)"})
                                .next(sfn.Wait(scope, wiring.WAIT_TO_RETRY_TRAINING_STATE,
                                               time=sfn.WaitTime.duration(Duration.seconds(TRAINING_RETRY_SECONDS))))
                                .next(train))
                          .otherwise(notify_failure))
        # Quota errors have a name of their own; everything else SageMaker refuses (throttling and validation
        # alike) is SageMaker.AmazonSageMakerException, which only the cause tells apart: TrainingRetryable.
        guard(train, {"errors": ["SageMaker.ResourceLimitExceededException"], "max_attempts": 3,
                      "interval": Duration.seconds(60), "backoff_rate": 2}, catch=retry_training)
        artifact = sfn.JsonPath.string_at("$.training.ModelArtifacts.S3ModelArtifacts")
        evaluate = invoke(wiring.EVALUATE_STATE, self.evaluate,
                          {"run_id": sfn.JsonPath.string_at("$.request.run_id"), "model_artifact": artifact},
                          "$.evaluation")
        register = invoke(wiring.REGISTER_STATE, self.register, {
            "run_id": sfn.JsonPath.string_at("$.request.run_id"),
            "dataset": sfn.JsonPath.string_at("$.request.dataset"),
            "training_job_name": sfn.JsonPath.string_at("$.training.TrainingJobName"),
            "model_artifact": artifact,
            "summary_uri": sfn.JsonPath.string_at("$.dataset.summary_uri"),
            "evaluation": sfn.JsonPath.object_at("$.evaluation"),
        }, "$.registration")
        in_function = self.config.endpoint_mode == "lambda"  # no endpoint: the approval is the deployment
        notify_deployed = guard(publish(wiring.NOTIFY_DEPLOYED_STATE, "model deployed", {
            "outcome": "deployed", "run_id": sfn.JsonPath.string_at("$.request.run_id"),
            **({"endpoint": "none: the predict function serves the approved model (endpoint_mode=lambda)",
                "model": sfn.JsonPath.string_at("$.training.TrainingJobName")} if in_function else {
                "endpoint": sfn.JsonPath.string_at("$.deployment.endpoint_name"),
                "model": sfn.JsonPath.string_at("$.deployment.model_name")}),
            "artifact_sha256": sfn.JsonPath.string_at("$.evaluation.artifact_sha256"),
            "gate": sfn.JsonPath.object_at("$.evaluation.checks"),
            "registration": sfn.JsonPath.object_at("$.registration"),
            "rescore": sfn.JsonPath.object_at("$.rescore"),
        }), sns_transient)
        notify_rejected = guard(publish(wiring.NOTIFY_REJECTED_STATE, "model not approved, not deployed", {
            "outcome": "rejected", "run_id": sfn.JsonPath.string_at("$.request.run_id"),
            "failures": sfn.JsonPath.list_at("$.evaluation.failures"),
            "report": sfn.JsonPath.string_at("$.evaluation.report_uri"),
            "registration": sfn.JsonPath.object_at("$.registration"),
        }), sns_transient)
        def start_rescore(model: dict) -> tasks.LambdaInvoke:
            """The re-score's first step (a failure in any step is reported with the deployment, which stands)."""
            return guard(lambda_task(wiring.START_RESCORE_STATE, self.start_rescore, {
                "run_id": sfn.JsonPath.string_at("$.request.run_id"), **model}, "$.rescore"),
                catch=notify_deployed, caught_at="$.rescore")

        def rescore_status() -> tasks.LambdaInvoke:
            return guard(lambda_task(wiring.RESCORE_STATUS_STATE, self.rescore_status, {
                "run_id": sfn.JsonPath.string_at("$.request.run_id"), "job": sfn.JsonPath.string_at("$.rescore.job"),
                "output": sfn.JsonPath.string_at("$.rescore.output"),
                "input": sfn.JsonPath.string_at("$.rescore.input"),
                "images": sfn.JsonPath.number_at("$.rescore.images"), "started": True,
                **({"scorer": sfn.JsonPath.string_at("$.rescore.scorer")} if in_function else {})}, "$.rescore"),
                catch=notify_deployed, caught_at="$.rescore")

        def function_path() -> sfn.IChainable:
            """endpoint_mode=lambda: the approval is the deployment; the re-score runs the approved package in
            RescoreBatch, a batch of copies an iteration of an inline Map (infra/components/packing.py says why
            inline), then writes the report."""
            start = start_rescore({"model_package_arn": sfn.JsonPath.string_at("$.registration.model_package_arn")})
            score = tasks.LambdaInvoke(scope, wiring.SCORE_BATCH_STATE, lambda_function=self.rescore_batch.function,
                                       payload_response_only=True, retry_on_service_exceptions=False)
            score.add_retry(errors=LAMBDA_TRANSIENT, max_attempts=3, interval=Duration.seconds(5), backoff_rate=2)
            recent = sfn.Map(scope, wiring.SCORE_RECENT_STATE, items_path=sfn.JsonPath.string_at("$.rescore.batches"),
                             item_selector={"package": sfn.JsonPath.string_at("$.rescore.package"),
                                            "input": sfn.JsonPath.string_at("$.rescore.input"),
                                            "start_after": sfn.JsonPath.string_at("$$.Map.Item.Value.start_after"),
                                            "last": sfn.JsonPath.string_at("$$.Map.Item.Value.last")},
                             max_concurrency=RESCORE_CONCURRENCY, result_path=sfn.JsonPath.DISCARD)
            recent.item_processor(score)
            recent.add_catch(notify_deployed, errors=["States.ALL"], result_path="$.rescore")
            recent.next(rescore_status()).next(notify_deployed)
            return start.next(sfn.Choice(scope, wiring.RESCORE_STARTED_STATE)
                              .when(sfn.Condition.boolean_equals("$.rescore.started", True), recent)
                              .otherwise(notify_deployed))

        def endpoint_path() -> sfn.IChainable:
            """Deploy, wait until the endpoint serves, then re-score: built only when there is an endpoint, since
            every state a Catch or transition names is rendered, and Step Functions refuses unreachable ones."""
            deploy = invoke(wiring.DEPLOY_STATE, self.deploy, {
                "run_id": sfn.JsonPath.string_at("$.request.run_id"),
                "model_name": sfn.JsonPath.string_at("$.training.TrainingJobName"),
                "model_artifact": artifact,
                "artifact_sha256": sfn.JsonPath.string_at("$.evaluation.artifact_sha256"),
            }, "$.deployment")
            deploy.add_retry(errors=["EndpointBusy"], max_attempts=20, interval=Duration.seconds(30), backoff_rate=1.5,
                             max_delay=Duration.minutes(5))
            wait = sfn.Wait(scope, wiring.WAIT_STATE, time=sfn.WaitTime.duration(Duration.seconds(WAIT_SECONDS)))
            status = invoke(wiring.ENDPOINT_STATUS_STATE, self.status, {
                "endpoint_name": sfn.JsonPath.string_at("$.deployment.endpoint_name"),
                "endpoint_config_name": sfn.JsonPath.string_at("$.deployment.endpoint_config_name"),
            }, "$.endpoint")
            # The re-score of recent X-rays by a Batch Transform job of the deployed model.
            start = start_rescore({"model_name": sfn.JsonPath.string_at("$.deployment.model_name")})
            wait_rescore = sfn.Wait(scope, wiring.WAIT_FOR_RESCORE_STATE,
                                    time=sfn.WaitTime.duration(Duration.seconds(WAIT_SECONDS)))
            rescore_done = (sfn.Choice(scope, wiring.RESCORE_DONE_STATE)
                            .when(sfn.Condition.boolean_equals("$.rescore.done", True), notify_deployed)
                            .otherwise(wait_rescore))
            wait_rescore.next(rescore_status()).next(rescore_done)
            start.next(sfn.Choice(scope, wiring.RESCORE_STARTED_STATE)
                       .when(sfn.Condition.boolean_equals("$.rescore.started", True), wait_rescore)
                       .otherwise(notify_deployed))
            ready = (sfn.Choice(scope, wiring.ENDPOINT_READY_STATE)
                     .when(sfn.Condition.boolean_equals("$.endpoint.ready", True), start)
                     .otherwise(wait.next(status)))
            return deploy.next(status).next(ready)

        gate = (sfn.Choice(scope, wiring.GATE_STATE)
                .when(sfn.Condition.boolean_equals("$.registration.approved", True),
                      function_path() if in_function else endpoint_path())
                .otherwise(notify_rejected.next(sfn.Succeed(scope, wiring.NOT_DEPLOYED_STATE,
                                                            comment="the previous endpoint keeps serving"))))
        # A request of another shape would fail a later input path or intrinsic with States.Runtime, which no
        # Catch sees: check it first, notify, and fail with a message that names the contract.
        invalid = guard(publish(wiring.NOTIFY_INVALID_REQUEST_STATE, "training request refused",
                                failure({"Error": "InvalidRequest", "Cause": INVALID_REQUEST_CAUSE})), sns_transient)
        invalid.next(sfn.Fail(scope, wiring.INVALID_REQUEST_STATE, error="InvalidRequest", cause=INVALID_REQUEST_CAUSE))
        apply_defaults.next(prepare).next(pack).next(train).next(evaluate).next(register).next(gate)
        check = sfn.Choice(scope, wiring.VALID_REQUEST_STATE)
        for condition, valid in _request_rules():
            check.when(condition, apply_defaults if valid else invalid)
        return read_request.next(check.otherwise(invalid))

    def _training_role(self) -> iam.Role:
        """What the training job itself may do: read its data and code, write its model and checkpoints."""
        role = iam.Role(self, wiring.TRAINING_ROLE_ID, assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
                        description="cxr SageMaker training jobs")
        allow_objects(role, wiring.DATA, self.config.stage, self.key,
                      read=[layout.PROCESSED, layout.MANIFESTS, layout.CHECKPOINTS],
                      write=[layout.MODELS, layout.CHECKPOINTS],
                      list_=[layout.CHECKPOINTS, layout.MANIFESTS])  # S3Prefix shard channels are listed first
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
        # Batch Transform (`cxr batch-predict`, the post-deployment re-score): X-rays copied under opaque names into
        # batch-input/ (never incoming/'s keys: lambdas/rescore.py), one answer per X-ray out
        allow_objects(role, wiring.INFERENCE, self.config.stage, self.key, read=[layout.BATCH_INPUT],
                      write=[layout.BATCH_OUTPUT], list_=[layout.BATCH_INPUT])
        self._allow_container(role, images.INFERENCE_CPU,
                              wiring.endpoint_log_group(wiring.endpoint_name(self.config.stage)))
        if self.config.endpoint_mode == "async":  # each request's input in S3, its result (or failure) back to S3
            allow_objects(role, wiring.INFERENCE, self.config.stage, self.key, read=[layout.ASYNC_INPUT],
                          write=[layout.ASYNC_OUTPUT])
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

    def _stage_resources(self, *kinds: str) -> list[str]:
        """ARN patterns of this stage's SageMaker resources of each kind (``<kind>/cxr-<n><stage>-*``)."""
        pattern = f"{wiring.resource_prefix(self.config.stage)}*"
        return [self.format_arn(service="sagemaker", resource=kind, resource_name=pattern) for kind in kinds]

    def registry_resources(self) -> list[str]:
        """The stage's model package group and its versioned packages (``model-package/<group>/<version>``)."""
        group = wiring.model_package_group(self.config.stage)
        return [self.format_arn(service="sagemaker", resource="model-package-group", resource_name=group),
                self.format_arn(service="sagemaker", resource="model-package", resource_name=f"{group}/*")]

    def _allow_registry(self, function, *actions: str) -> None:
        function.add_to_role_policy(iam.PolicyStatement(actions=[f"sagemaker:{a}" for a in actions],
                                                        resources=self.registry_resources()))
        function.add_to_role_policy(iam.PolicyStatement(  # no resource-level permissions (it lists by group name)
            actions=["sagemaker:ListModelPackages"], resources=["*"]))

    def _allow_deploy(self, function, endpoint_name: str) -> None:
        function.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:CreateModel", "sagemaker:CreateEndpointConfig", "sagemaker:AddTags",
                     "sagemaker:DescribeEndpointConfig", "sagemaker:DescribeModel"],
            resources=self._stage_resources("model", "endpoint-config")))
        function.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint", "sagemaker:DeleteEndpoint",
                     "sagemaker:DescribeEndpoint", "sagemaker:AddTags"],
            resources=[self.format_arn(service="sagemaker", resource="endpoint", resource_name=endpoint_name),
                       *self._stage_resources("endpoint-config")]))
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
                        for f in (self.prepare, self.pack, self.evaluate, self.register, self.deploy, self.status,
                                  self.start_rescore, self.rescore_status,
                                  *([self.rescore_batch] if self.config.endpoint_mode == "lambda" else []))))
        arn = "arn:<AWS::Partition>:{service}:<AWS::Region>:<AWS::AccountId>:{resource}"
        job = f"{wiring.resource_prefix(self.config.stage)}*"

        def stage_findings(*kinds: str) -> list[str]:
            return [f"AwsSolutions-IAM5[Resource::{arn.format(service='sagemaker', resource=kind + '/' + job)}]"
                    for kind in kinds]

        scope = (f"the {job[:-1]} prefix scopes them to this stage (wiring.resource_prefix: no other stage's "
                 "names start with it).")
        acknowledge(machine_role, "Training job names are generated per attempt (unique, as SageMaker requires); "
                    + scope, *stage_findings("training-job"))
        group = wiring.model_package_group(self.config.stage)
        acknowledge(self.register.role, "Versioned model packages are named <group>/<version>, the version assigned "
                    "by SageMaker; ListModelPackages has no resource-level permissions (it lists one group by name).",
                    "AwsSolutions-IAM5[Resource::*]",
                    "AwsSolutions-IAM5[Resource::"
                    f"{arn.format(service='sagemaker', resource='model-package/' + group)}/*]")
        transform_roles = (self.start_rescore.role, self.rescore_status.role)
        for role in transform_roles if self.config.endpoint_mode != "lambda" else ():
            acknowledge(role, "Re-score transform jobs are named after the run; " + scope,
                        *stage_findings("transform-job"))
        acknowledge(self.deploy.role, "Models and endpoint configurations are named after each run's training job; "
                    + scope, *stage_findings("model", "endpoint-config"))
        acknowledge(self.status.role, "sagemaker:ListEndpointConfigs has no resource-level permissions (the function "
                    "lists by name prefix); tags are read and deletions made only for this stage's models and "
                    "configurations, and only those tagged with its endpoint are deleted. Models and configurations "
                    "are named after each run's training job; " + scope, "AwsSolutions-IAM5[Resource::*]",
                    *stage_findings("model", "endpoint-config"))
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

