"""The one ASL rewrite of the local mode: only the training task's resource changes."""

import copy

import pytest

from cxr.local.pipeline import localize_training_task
from infra import wiring

LOCAL = "arn:aws:lambda:us-east-1:123456789012:function:local-training"


def machine(*resources: str) -> dict:
    states = {f"S{i}": {"Type": "Task", "Resource": r, "Parameters": {"A": i}, "Next": f"S{i + 1}"}
              for i, r in enumerate(resources)}
    states[f"S{len(resources)}"] = {"Type": "Succeed"}
    return {"StartAt": "S0", "States": states}


def test_only_the_training_task_is_rewritten():
    original = machine("arn:aws:states:::lambda:invoke", wiring.TRAINING_INTEGRATION, "arn:aws:states:::sns:publish")
    rewritten = localize_training_task(copy.deepcopy(original), LOCAL)
    assert rewritten["States"]["S1"]["Resource"] == LOCAL
    rewritten["States"]["S1"]["Resource"] = wiring.TRAINING_INTEGRATION
    assert rewritten == original  # Parameters, Retry, Catch and every other state untouched


def test_training_tasks_inside_branches_are_found():
    inner = machine(wiring.TRAINING_INTEGRATION)
    outer = {"StartAt": "P", "States": {"P": {"Type": "Parallel", "Branches": [inner], "End": True}}}
    assert localize_training_task(outer, LOCAL)["States"]["P"]["Branches"][0]["States"]["S0"]["Resource"] == LOCAL


@pytest.mark.parametrize("resources", [(), (wiring.TRAINING_INTEGRATION, wiring.TRAINING_INTEGRATION)])
def test_anything_but_exactly_one_training_task_is_refused(resources):
    with pytest.raises(ValueError, match="exactly one"):
        localize_training_task(machine(*resources), LOCAL)
