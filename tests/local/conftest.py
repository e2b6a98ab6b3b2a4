"""One synthesis of the CDK app (stage ``e2e``, demo profile) for every offline-cloud test."""

import pytest

from cxr.local import pipeline
from infra.config import Config

STAGE = "e2e"


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory):
    return pipeline.synthesize(Config.demo(stage=STAGE), tmp_path_factory.mktemp("cdk") / "cdk.out")
