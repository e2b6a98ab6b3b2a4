"""One synthesis of the CDK app (stage ``e2e``, demo profile) for every offline-cloud test."""

import pytest

from cxr.local import pipeline
from infra.config import Config

STAGE = "e2e"
RETENTION_DAYS = 7
"""Prediction JSON under Object Lock in these runs (as in prod), so the IAM checks see retention writes; the
offline clouds of the tests that compare themselves with this synthesis use the same setting."""


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory):
    config = Config.demo(stage=STAGE, prediction_retention_days=RETENTION_DAYS)
    return pipeline.synthesize(config, tmp_path_factory.mktemp("cdk") / "cdk.out")
