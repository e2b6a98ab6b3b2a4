"""The retained DICOM pseudonym key across teardown and deploy: listed, adopted, or named as what blocks."""

from __future__ import annotations

import boto3
import pytest
from test_redeploy import STAGE, tgt  # noqa: F401

from cxr import deployment
from cxr.errors import UserError
from infra import wiring

NAME = wiring.PSEUDONYM_SECRET_NAME.format(stage=STAGE)


def test_a_retained_secret_is_adopted_and_none_is_not_asked_for(tgt):  # noqa: F811
    assert deployment.retained_resources(tgt) == []
    boto3.client("secretsmanager").create_secret(Name=NAME, SecretString="k" * 64)
    retained = deployment.retained_resources(tgt)
    assert [(r.kind, r.name, r.problem) for r in retained] == [(deployment.SECRET, NAME, "")]
    assert deployment.adopt_overrides(retained) == {"adopt_pseudonym_secret": "true"}


def test_a_secret_scheduled_for_deletion_stops_the_deploy_with_the_way_out(tgt):  # noqa: F811
    client = boto3.client("secretsmanager")
    client.create_secret(Name=NAME, SecretString="k" * 64)
    client.delete_secret(SecretId=NAME, RecoveryWindowInDays=7)
    with pytest.raises(UserError, match="restore-secret"):
        deployment.adopt_overrides(deployment.retained_resources(tgt))
