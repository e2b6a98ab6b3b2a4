"""A Lambda function as ``infra.wiring`` describes it, with its log group, DLQ, tracing and error alarm."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra import bundling, wiring
from infra.config import Config

from .nag import acknowledge
from .retention import retention

ASYNC_RETRIES = wiring.ASYNC_RETRIES
MAX_EVENT_AGE = Duration.seconds(wiring.MAX_EVENT_AGE_S)


class ServiceFunction(Construct):
    """One function; asynchronously invoked ones (S3 events, schedules) also get bounded retries and event age, a DLQ,
    optional reserved concurrency."""

    def __init__(
        self,
        scope: Construct,
        spec: wiring.Function,
        *,
        config: Config,
        key: kms.IKey,
        alarm_topic: sns.ITopic,
        environment: Mapping[str, str],
    ):
        super().__init__(scope, spec.id)
        missing = set(spec.environment) ^ set(environment)
        if missing:
            raise ValueError(f"{spec.id}: environment differs from infra.wiring by {sorted(missing)}")
        self.spec = spec
        self.log_group = logs.LogGroup(
            self, "Logs", encryption_key=key, retention=retention(config.log_retention_days),
            removal_policy=RemovalPolicy.RETAIN,
        )
        # our own role: no managed policy, logs only to this function's log group
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                             description=f"cxr {config.stage}: {spec.id} function")
        self.log_group.grant_write(self.role)
        asynchronous = spec.asynchronous
        self.dead_letter_queue = (
            sqs.Queue(self, "DeadLetters", encryption=sqs.QueueEncryption.KMS, encryption_master_key=key,
                      enforce_ssl=True, retention_period=Duration.days(14))
            if asynchronous else None
        )
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=bundling.RUNTIME,
            architecture=bundling.ARCHITECTURES[config.lambda_architecture],
            code=bundling.code(config.lambda_architecture),
            handler=spec.handler,
            role=self.role,
            memory_size=spec.memory_mb,
            timeout=Duration.seconds(spec.timeout_s),
            environment={
                **environment,
                "POWERTOOLS_SERVICE_NAME": spec.service,
                "POWERTOOLS_METRICS_NAMESPACE": wiring.METRICS_NAMESPACE,
                "POWERTOOLS_LOG_LEVEL": wiring.LOG_LEVEL,
            },
            environment_encryption=key,
            log_group=self.log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            tracing=lambda_.Tracing.ACTIVE,
            dead_letter_queue=self.dead_letter_queue,
            retry_attempts=ASYNC_RETRIES if asynchronous else None,
            max_event_age=MAX_EVENT_AGE if asynchronous else None,
            reserved_concurrent_executions=config.reserved_concurrency if asynchronous else None,
            description=f"cxr {config.stage}: {spec.handler}",
        )
        # the key decrypts the environment; a dead-letter queue also needs data keys to send encrypted messages
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["kms:Decrypt", "kms:GenerateDataKey"] if asynchronous else ["kms:Decrypt"],
            resources=[key.key_arn]))
        self.errors_alarm = self.function.metric_errors(period=Duration.minutes(5)).create_alarm(
            self, "Errors", threshold=1, evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=f"{spec.id} raised errors (transient failures are retried; see its log group)",
        )
        self.errors_alarm.add_alarm_action(cw_actions.SnsAction(alarm_topic))
        if self.dead_letter_queue is not None:
            self.dead_letters_alarm = self.dead_letter_queue.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(5)).create_alarm(
                self, "DeadLettersAlarm", threshold=1, evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                alarm_description=f"events {spec.id} gave up on are waiting in its dead-letter queue",
            )
            self.dead_letters_alarm.add_alarm_action(cw_actions.SnsAction(alarm_topic))
        else:
            acknowledge(self.function, "Invoked synchronously by Step Functions, whose Retry and Catch handle "
                        "failures; a DLQ only receives asynchronous invocations.", "HIPAA.Security-LambdaDLQ")
        if config.reserved_concurrency is None or not asynchronous:
            acknowledge(self.function, "Reserved concurrency is a setting (reserved_concurrency), off by default: new "
                        "accounts have a concurrency quota of about 10, and reserving any of it can fail the "
                        "deployment.",
                        "HIPAA.Security-LambdaConcurrency")
        acknowledge(self.role, "X-Ray tracing (PutTraceSegments, PutTelemetryRecords) has no resource-level "
                    "permissions.", "AwsSolutions-IAM5[Resource::*]")
        acknowledge(self.function, "No VPC: the function reaches only AWS APIs (S3, DynamoDB, SageMaker, SSM) over TLS "
                    "with IAM; a VPC needs NAT or interface endpoints at a fixed hourly cost, against the pay-per-use "
                    "design.", "HIPAA.Security-LambdaInsideVPC")

