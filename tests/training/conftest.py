"""A tiny generated dataset, staged as SageMaker channels, and one short training run shared by the module tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import TINY_HPS, write_dataset  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tiny") / "xrays", per_class=16)


@pytest.fixture(scope="session")
def staged(tiny_dataset, tmp_path_factory):
    from cxr import training_run

    return training_run.stage_dataset(tiny_dataset, tmp_path_factory.mktemp("staged"), workers=1)


@pytest.fixture(scope="session")
def trained(staged, tmp_path_factory) -> Path:
    """The output folder of one complete tiny training job (model/, output/, checkpoints/)."""
    from cxr import training_run

    out = tmp_path_factory.mktemp("job")
    training_run.run_training_job(staged.channels, TINY_HPS, out)
    return out
