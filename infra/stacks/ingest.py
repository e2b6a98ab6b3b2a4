"""Ingest: the preprocess Lambda on every object created or removed under the data bucket's ``raw/``."""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from constructs import Construct

from infra import wiring
from infra.components.access import allow_objects, allow_secret
from infra.components.buckets import imported_bucket
from infra.components.function import ServiceFunction
from infra.components.tables import allow_items
from infra.components.trigger import add_trigger
from infra.config import Config
from lambdas.domain import layout, source_names


class IngestStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: Config, key: kms.IKey, topic: sns.ITopic,
                 state_table: dynamodb.ITable, **kwargs):
        super().__init__(scope, construct_id, **kwargs)
        spec = wiring.PREPROCESS
        data_bucket = imported_bucket(self, spec.trigger.bucket, config.stage)
        # by its name, as the buckets: the storage stack owns (and retains) it; a reference would make its key
        # policy name this role and the two stacks depend on each other
        secret_name = wiring.PSEUDONYM_SECRET_NAME.format(stage=config.stage)
        self.preprocess = ServiceFunction(self, spec, config=config, key=key, alarm_topic=topic,
                                          environment={wiring.ENV_DATA_BUCKET: data_bucket.bucket_name,
                                                       wiring.ENV_SOURCE_STATE_TABLE: state_table.table_name,
                                                       wiring.ENV_PSEUDONYM_SECRET: secret_name})
        function = self.preprocess.function
        # reads the current version of an upload; writes its outputs and tombstones superseded ones (a delete
        # without a version id: every version stays); never deletes anything under raw/, where it writes only the
        # pointers from opaque names back to keys (lambdas/domain/source_names.py)
        allow_objects(function, spec.trigger.bucket, config.stage, key, read=[spec.trigger.prefix],
                      write=[layout.PROCESSED, layout.QUARANTINE, layout.RAW + source_names.POINTERS],
                      tombstone=[layout.PROCESSED, layout.QUARANTINE])
        # events, leases, outcomes and identical-pixel claims
        allow_items(function, state_table, key, "dynamodb:GetItem", "dynamodb:UpdateItem")
        # the pseudonym key (lambdas/pseudonyms.py): DICOM pseudonyms and every upload's opaque name
        allow_secret(function, self, secret_name)
        add_trigger(data_bucket, function, spec.trigger)
