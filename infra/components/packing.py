"""The PackShards step of the training pipeline: a Map state over PrepareDataset's packing items, and the packing
function's object access.

Inline Map, not Distributed: the items arrive in the state input as a JSON array of a few hundred bytes each, one
per at most ``lambdas.domain.packing.IMAGES_PER_ITEM`` images (24 at 200,000 images), and an inline Map's
iterations are written into the execution's own history (about 7 events an item; the limit is 25,000 events) with
up to 40 iterations at once (Step Functions Developer Guide, "Using Map state in Inline mode"). A Distributed Map
(child executions, items from S3) is for millions of items; it would add a child workflow per item and an
``states:StartExecution`` grant for nothing at this size. The iterations' results are discarded (``ResultPath``
null): the state's output is its input, so the payload (256 KiB at most) does not grow with the items.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from infra import wiring
from lambdas.domain import layout

from .access import allow_objects
from .buckets import bucket_arn, nag_bucket_arn
from .nag import acknowledge

MAX_CONCURRENCY = 10
"""Items packed at once: 10 x 16 GETs in flight, far below S3's 5,500 GETs a second per prefix, and 10 of the
account's Lambda concurrency (1,000 by default), so ingest keeps room while a run packs."""
SHARDS = f"{layout.MANIFESTS}*/shards/"
JSONL = f"{layout.MANIFESTS}*.jsonl"


def pack_shards(scope: Construct, function: lambda_.IFunction, transient: list[str]) -> sfn.Map:
    """``PackShards``: ``PackShard`` (the packing function) per item of ``$.dataset.packing``; its output is its
    input. ``transient`` errors are retried on the item alone (a retried item rewrites identical shards); any other
    fails the Map."""
    pack = tasks.LambdaInvoke(scope, wiring.PACK_SHARD_STATE, lambda_function=function, payload_response_only=True,
                              retry_on_service_exceptions=False)  # the function's event: the item itself
    pack.add_retry(errors=transient, max_attempts=3, interval=Duration.seconds(5), backoff_rate=2)
    packing = sfn.Map(scope, wiring.PACK_SHARDS_STATE, items_path=sfn.JsonPath.string_at("$.dataset.packing"),
                      max_concurrency=MAX_CONCURRENCY, result_path=sfn.JsonPath.DISCARD)
    packing.item_processor(pack)
    return packing


def allow_pack_shards(function: lambda_.IFunction, stage: str, key: kms.IKey) -> None:
    """Read the processed PNGs and the runs' jsonl manifests; write shards and nothing else."""
    allow_objects(function, wiring.DATA, stage, key, read=[layout.PROCESSED], write=[SHARDS])
    function.add_to_role_policy(iam.PolicyStatement(actions=["s3:GetObject"],
                                                    resources=[f"{bucket_arn(wiring.DATA, stage)}/{JSONL}"]))
    acknowledge(function.role, "The packing function reads each run's split manifests (manifests/<run>/<split>.jsonl);"
                " run ids are data.", f"AwsSolutions-IAM5[Resource::{nag_bucket_arn(wiring.DATA, stage)}/{JSONL}]")
