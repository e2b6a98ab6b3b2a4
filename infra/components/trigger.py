"""An S3 ``ObjectCreated`` notification from ``infra.wiring``: a prefix filter only, no suffix."""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as notifications
from constructs import Construct

from infra import wiring

from .nag import acknowledge


def add_trigger(scope: Construct, bucket: s3.IBucket, function: lambda_.IFunction, trigger: wiring.Trigger) -> None:
    """Subscribe ``function`` to every object created under the trigger's prefix.

    ``bucket`` is imported into ``scope``'s stack, so CDK's notification resource lives beside the
    function and the storage stack does not depend on its consumers (which would be a cycle).
    """
    imported = s3.Bucket.from_bucket_attributes(scope, f"{trigger.bucket.capitalize()}BucketRef",
                                                bucket_arn=bucket.bucket_arn, bucket_name=bucket.bucket_name)
    imported.add_event_notification(s3.EventType.OBJECT_CREATED, notifications.LambdaDestination(function),
                                    s3.NotificationKeyFilter(prefix=trigger.prefix))
    for child in Stack.of(scope).node.children:
        if child.node.id.startswith("BucketNotificationsHandler"):
            acknowledge_notification_handler(child)


def acknowledge_notification_handler(handler: Construct) -> None:
    """CDK's own handler that writes the bucket notification configuration at deploy time (not our code)."""
    acknowledge(handler, "CDK's bucket-notification handler: it needs s3:PutBucketNotification, which has no "
                "resource-level scoping in its generated policy, and the basic execution role for its logs; it runs "
                "only during deployment.",
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
                "AwsSolutions-IAM5[Resource::*]")
