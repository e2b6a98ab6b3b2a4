"""S3 notifications from ``infra.wiring``: the trigger's event types, a prefix filter only, no suffix."""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as notifications
from constructs import Construct

from infra import wiring

from .nag import acknowledge

EVENT_TYPES = {wiring.OBJECT_CREATED: s3.EventType.OBJECT_CREATED, wiring.OBJECT_REMOVED: s3.EventType.OBJECT_REMOVED}


def add_trigger(bucket: s3.IBucket, function: lambda_.IFunction, trigger: wiring.Trigger) -> None:
    """Subscribe ``function`` to the trigger's events (created, and removed where wired) under its prefix.

    ``bucket`` is imported into the function's stack, so CDK's notification resource lives beside
    the function and the storage stack does not depend on its consumers (which would be a cycle).
    """
    for event in trigger.events:
        bucket.add_event_notification(EVENT_TYPES[event], notifications.LambdaDestination(function),
                                      s3.NotificationKeyFilter(prefix=trigger.prefix))
    for child in Stack.of(bucket).node.children:
        if child.node.id.startswith("BucketNotificationsHandler"):
            _acknowledge_notification_handler(child)


def _acknowledge_notification_handler(handler: Construct) -> None:
    """CDK's own handler that writes the bucket notification configuration at deploy time (not our code)."""
    acknowledge(handler, "CDK's bucket-notification handler runs only during deployment; CDK gives its role the "
                "basic execution policy for its logs and offers no way to replace it.",
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]")
