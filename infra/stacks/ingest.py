"""Ingest: the preprocess Lambda on every object created under the data bucket's ``raw/``."""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from constructs import Construct

from infra import wiring
from infra.components.access import allow_objects
from infra.components.buckets import imported_bucket
from infra.components.function import ServiceFunction
from infra.components.trigger import add_trigger
from infra.config import Config
from lambdas.domain import layout


class IngestStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: Config, key: kms.IKey, topic: sns.ITopic,
                 **kwargs):
        super().__init__(scope, construct_id, **kwargs)
        spec = wiring.PREPROCESS
        data_bucket = imported_bucket(self, spec.trigger.bucket, config.stage)
        self.preprocess = ServiceFunction(self, spec, config=config, key=key, alarm_topic=topic,
                                          environment={wiring.ENV_DATA_BUCKET: data_bucket.bucket_name})
        function = self.preprocess.function
        # reads the announced upload, its own sidecars (duplicates) and rejection records (newest event wins);
        # writes outputs and rejection records; never deletes
        allow_objects(function, spec.trigger.bucket, config.stage, key,
                      read=[spec.trigger.prefix, layout.PROCESSED, layout.QUARANTINE],
                      write=[layout.PROCESSED, layout.QUARANTINE])
        add_trigger(data_bucket, function, spec.trigger)
