"""One synthesis of the CDK app (stage ``e2e``, demo profile) for every offline-cloud test."""

import json
from pathlib import Path

import pytest

from cxr.local import pipeline
from infra.config import Config

STAGE = "e2e"
TEMPLATES = "templates.json"
RETENTION_DAYS = 7
"""Prediction JSON under Object Lock in these runs (as in prod), so the IAM checks see retention writes; the
offline clouds of the tests that compare themselves with this synthesis use the same setting."""


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory):
    """Synthesized once per run (:mod:`shared_synthesis`); its templates, in the assembly's order, read back."""
    from shared_synthesis import synthesized_once

    def synthesize(folder: Path) -> None:
        config = Config.demo(stage=STAGE, prediction_retention_days=RETENTION_DAYS)
        (folder / TEMPLATES).write_text(json.dumps(pipeline.synthesize(config, folder / "cdk.out").templates))

    folder = synthesized_once(tmp_path_factory, "cdk-e2e", synthesize)
    return pipeline.Synthesized(templates=json.loads((folder / TEMPLATES).read_text()), outdir=folder / "cdk.out")
