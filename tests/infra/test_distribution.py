"""Distributed training is configuration: instance count and type, and the hyperparameters the SageMaker SDK sends."""

from __future__ import annotations

import pytest

from infra.components.training import distribution_hyperparameters
from infra.config import Config, ConfigError


def sdk_estimator(instance_type: str, count: int):
    """The SDK's PyTorch estimator with ``distribution={"torch_distributed": {"enabled": True}}`` (no AWS call)."""
    from sagemaker.pytorch import PyTorch

    return PyTorch(entry_point="train.py", source_dir="training_job", role="arn:aws:iam::123456789012:role/r",
                   instance_type=instance_type, instance_count=count, framework_version="2.3.0", py_version="py311",
                   distribution={"torch_distributed": {"enabled": True}})


@pytest.mark.parametrize("instance_type, count", [("ml.g5.12xlarge", 2), ("ml.g4dn.xlarge", 1), ("ml.p4d.24xlarge", 4)])
def test_the_state_machine_sends_what_the_sdk_sends_for_torch_distributed(instance_type, count):
    config = Config.from_values({"training_instance_type": instance_type, "training_instance_count": str(count)})
    assert config.training_instance_count == count
    assert distribution_hyperparameters(config) == sdk_estimator(instance_type, count).hyperparameters()


def test_a_cpu_type_gets_no_launcher_and_cannot_take_several_instances():
    with pytest.raises(ValueError, match="only for GPU"):  # the SDK's own rule, which the configuration follows
        sdk_estimator("ml.c5.xlarge", 2)
    assert distribution_hyperparameters(Config(training_instance_type="ml.c5.xlarge")) == {}
    with pytest.raises(ConfigError, match="training_instance_count 2 needs a GPU"):
        Config.from_values({"training_instance_type": "ml.c5.xlarge", "training_instance_count": "2"})
    for bad in ("0", "17", "two"):
        with pytest.raises(ConfigError, match="training_instance_count"):
            Config.from_values({"training_instance_count": bad})
