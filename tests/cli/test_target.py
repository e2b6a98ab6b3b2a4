"""How commands find a deployment, and the one-line errors when they cannot."""

import boto3
import pytest

from cxr import target
from cxr.errors import UserError


def test_a_stack_not_deployed_in_the_region_is_one_clear_line(aws):
    deployment = target.Target(session=boto3.Session(), stage="dev", account="123456789012", region="eu-west-1")
    with pytest.raises(UserError) as caught:
        deployment.state_machine_arn()
    message = str(caught.value)
    assert "stack CxrDevTrainingPipeline is not deployed in eu-west-1" in message
    assert "--region" in message and "\n" not in message


def test_names_follow_the_stacks_wiring():
    deployment = target.Target(session=boto3.Session(), stage="prod", account="111122223333", region="eu-west-1")
    assert deployment.bucket("data") == "cxr-prod-data-111122223333-eu-west-1"
    assert deployment.endpoint_name == "cxr-prod"


def test_local_target_needs_a_running_offline_cloud(tmp_path, monkeypatch):
    monkeypatch.setattr(target, "LOCAL_STATE", tmp_path / "server.json")
    with pytest.raises(UserError, match="not running: start it with `cxr local up`"):
        target.local_target()
