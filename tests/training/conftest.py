"""A tiny generated dataset, staged as SageMaker channels, and one short training run shared by the module tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import write_dataset  # noqa: E402

TINY_HPS = {"architecture": "compact", "width": 8, "image-size": 32, "epochs": 3, "batch-size": 8, "lr": 0.003,
            "checkpoint-steps": 2, "keep-checkpoints": 100, "threads": 1, "ema-decay": 0.9}
"""A few seconds of CPU: 36 training images, 4 steps an epoch, a checkpoint every 2 steps."""


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
