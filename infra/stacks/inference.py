"""Inference: the predict Lambda on ``incoming/``, the endpoint-name parameter and the prediction tables.

Like ingest, the predict function keeps one current outcome per ``incoming/`` key in the source-state
table (``lambdas.domain.source_state``): it tombstones a superseded prediction or rejection (a delete
without a version id) and never deletes anything under ``incoming/``.

With ``endpoint_mode=lambda`` there is no endpoint to call: the predict function carries ONNX Runtime in a
layer and runs the stage's approved model itself (``lambdas/served_model.py``), reading the registry and the
artifact under ``models/`` instead.

With ``endpoint_mode=async`` the predict Lambda queues each request (input under ``async-input/``) and
the CompletePrediction Lambda, triggered by the result under ``async-output/``, writes the record.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from infra import wiring
from infra.components.access import allow_objects, allow_retention, allow_secret
from infra.components.buckets import bucket_arn, imported_bucket, nag_bucket_arn
from infra.components.function import ServiceFunction
from infra.components.nag import acknowledge
from infra.components.serving import serve_in_function
from infra.components.tables import allow_items, table
from infra.components.trigger import add_trigger
from infra.config import Config
from infra.version import code_version
from lambdas.domain import layout, source_names


class InferenceStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: Config, key: kms.IKey, topic: sns.ITopic,
                 state_table: dynamodb.ITable, **kwargs):
        super().__init__(scope, construct_id, **kwargs)
        inference_bucket = imported_bucket(self, wiring.PREDICT.trigger.bucket, config.stage)
        self.endpoint_name = wiring.endpoint_name(config.stage)
        self.endpoint_parameter = ssm.StringParameter(
            self, "EndpointParameter", parameter_name=wiring.endpoint_parameter_name(config.stage),
            string_value=wiring.NO_ENDPOINT,
            description="Name of the SageMaker endpoint serving predictions; the training pipeline updates it",
        )
        self.predictions = table(self, wiring.PREDICTIONS_TABLE, key=key, removal=RemovalPolicy.RETAIN)
        self.idempotency = table(self, wiring.IDEMPOTENCY_TABLE, key=key, removal=RemovalPolicy.DESTROY)
        self.review_tasks = table(self, wiring.REVIEW_TASKS_TABLE, key=key, removal=RemovalPolicy.RETAIN)
        review_queue = {wiring.ENV_REVIEW_TASKS_TABLE: self.review_tasks.table_name,
                        wiring.ENV_REVIEW_SAMPLE_RATE: str(config.review_sample_rate)}
        spec = wiring.PREDICT
        secret_name = wiring.PSEUDONYM_SECRET_NAME.format(stage=config.stage)  # by name, as in the ingest stack
        self.predict = ServiceFunction(self, spec, config=config, key=key, alarm_topic=topic, environment={
            wiring.ENV_INFERENCE_BUCKET: inference_bucket.bucket_name,
            wiring.ENV_ENDPOINT_PARAMETER: self.endpoint_parameter.parameter_name,
            wiring.ENV_PREDICTIONS_TABLE: self.predictions.table_name,
            wiring.ENV_IDEMPOTENCY_TABLE: self.idempotency.table_name,
            wiring.ENV_ENDPOINT_MODE: config.endpoint_mode,
            wiring.ENV_SOURCE_STATE_TABLE: state_table.table_name,
            wiring.ENV_CODE_VERSION: code_version(),
            wiring.ENV_PREDICTION_RETENTION_DAYS: str(config.retention_days),
            wiring.ENV_EXPLAIN_REFERRALS: "true" if config.explain_referrals else "false",
            **review_queue,
            wiring.ENV_DICOM_SR_OUTPUT: "true" if config.dicom_sr_output else "false",
            wiring.ENV_MODEL_PACKAGE_GROUP: wiring.model_package_group(config.stage),
            wiring.ENV_PSEUDONYM_SECRET: secret_name,
        })
        function = self.predict.function
        asynchronous = config.endpoint_mode == "async"
        queued = [layout.ASYNC_INPUT, layout.ASYNC_REQUESTS] if asynchronous else []
        # incoming/.names/: the pointers from opaque names back to keys (lambdas/domain/source_names.py)
        allow_objects(function, spec.trigger.bucket, config.stage, key, read=[spec.trigger.prefix],
                      write=[layout.PREDICTIONS, layout.REJECTED, layout.RESULTS_DICOM,
                             layout.INCOMING + source_names.POINTERS, *queued],
                      tombstone=[layout.PREDICTIONS, layout.REJECTED, layout.RESULTS_DICOM])
        allow_secret(function, self, secret_name)  # the key of every upload's opaque name
        self.endpoint_parameter.grant_read(function)
        function.add_to_role_policy(iam.PolicyStatement(
            actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"],
            resources=[self.idempotency.table_arn]))
        if config.endpoint_mode == "lambda":  # the champion, for uploads and `cxr batch-predict`
            serve_in_function(self, function, config, key, champion=True)
        else:
            function.add_to_role_policy(iam.PolicyStatement(  # an asynchronous endpoint refuses InvokeEndpoint
                actions=["sagemaker:InvokeEndpointAsync" if asynchronous else "sagemaker:InvokeEndpoint"],
                resources=[self.format_arn(service="sagemaker", resource="endpoint",
                                           resource_name=self.endpoint_name)]))
        add_trigger(inference_bucket, function, spec.trigger)

        complete = wiring.COMPLETE_PREDICTION
        self.complete = ServiceFunction(self, complete, config=config, key=key, alarm_topic=topic, environment={
            wiring.ENV_PREDICTIONS_TABLE: self.predictions.table_name,
            wiring.ENV_SOURCE_STATE_TABLE: state_table.table_name,
            wiring.ENV_CODE_VERSION: code_version(),
            wiring.ENV_PREDICTION_RETENTION_DAYS: str(config.retention_days),
            **review_queue,
        })
        allow_objects(self.complete.function, complete.trigger.bucket, config.stage, key,
                      read=[complete.trigger.prefix, layout.ASYNC_REQUESTS, spec.trigger.prefix],
                      write=[layout.PREDICTIONS, layout.REJECTED, layout.RESULTS_DICOM],
                      tombstone=[layout.PREDICTIONS, layout.REJECTED, layout.RESULTS_DICOM])
        add_trigger(inference_bucket, self.complete.function, complete.trigger)
        self.results_dicom_reader = self._results_dicom_reader(config.stage, key)
        for writer in (function, self.complete.function):  # both paths end in the same record and current outcome
            if config.retention_days:  # a PutObject with a retention period needs s3:PutObjectRetention as well
                allow_retention(writer, spec.trigger.bucket, config.stage, [layout.PREDICTIONS])
            # the version's item, and a landed asynchronous result; each key's events, lease and current outcome
            allow_items(writer, self.predictions, key, "dynamodb:PutItem", "dynamodb:GetItem")
            allow_items(writer, state_table, key, "dynamodb:GetItem", "dynamodb:UpdateItem")
            # a referred (or sampled) version opens its review task; a superseded one's open task is withdrawn
            allow_items(writer, self.review_tasks, key, "dynamodb:PutItem", "dynamodb:UpdateItem")

    def _results_dicom_reader(self, stage: str, key: kms.IKey) -> iam.ManagedPolicy:
        """The one read permission on ``results-dicom/``, whose DICOM SRs carry patient identity for a PACS.

        No role of the stacks reads that prefix; an operator attaches this policy to the PACS import's
        principal only (infra/README.md, "DICOM"). Decrypting is allowed through S3 alone.
        """
        prefix = f"{layout.RESULTS_DICOM}*"
        policy = iam.ManagedPolicy(self, "ResultsDicomReader", managed_policy_name=f"cxr-{stage}-results-dicom-reader",
                                   description="cxr: read the DICOM SR results (they carry patient identity)",
                                   statements=[
            iam.PolicyStatement(actions=["s3:GetObject", "s3:GetObjectVersion"],
                                resources=[f"{bucket_arn(wiring.INFERENCE, stage)}/{prefix}"]),
            iam.PolicyStatement(actions=["kms:Decrypt"], resources=[key.key_arn],
                                conditions={"StringEquals": {"kms:ViaService": f"s3.{self.region}.amazonaws.com"}}),
        ])
        acknowledge(policy, "the SR objects under results-dicom/ are named by their incoming/ keys, which are data",
                    f"AwsSolutions-IAM5[Resource::{nag_bucket_arn(wiring.INFERENCE, stage)}/{prefix}]")
        return policy
