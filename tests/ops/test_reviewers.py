"""`cxr reviewers add`: an invitation into the deployed pool's reviewers group (moto's Cognito and CloudFormation)."""

from __future__ import annotations

import json

import boto3
import pytest

from cxr import cli, target
from infra import wiring
from lambdas.domain import review

TEMPLATE = {"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
            "Outputs": {"PageUrl": {"Value": "https://d111.cloudfront.net"}}}
"""moto's CloudFormation creates no user pool: the pool is made beside the stack, and found as CloudFormation would."""


@pytest.fixture
def deployed(aws, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    cfn = boto3.client("cloudformation", region_name="eu-west-1")
    cfn.create_stack(StackName=wiring.stack_name("dev", "Review"), TemplateBody=json.dumps(TEMPLATE))
    idp = boto3.client("cognito-idp", region_name="eu-west-1")
    pool = idp.create_user_pool(PoolName="cxr-dev-reviewers")["UserPool"]["Id"]
    idp.create_group(UserPoolId=pool, GroupName=review.REVIEWERS_GROUP)

    def stack_resource(self, part, resource_type, logical_prefix=""):
        assert (part, resource_type) == ("Review", "AWS::Cognito::UserPool")
        return pool

    monkeypatch.setattr(target.Target, "stack_resource", stack_resource)
    return pool


def test_an_invited_reviewer_is_in_the_group_and_told_the_page(deployed, capsys):
    for _ in range(2):  # inviting twice is harmless
        assert cli.main(["reviewers", "add", "reader@example.org", "--region", "eu-west-1", "--stage", "dev"]) == 0
    out = capsys.readouterr().out
    assert "https://d111.cloudfront.net" in out and "already has an account" in out
    idp = boto3.client("cognito-idp", region_name="eu-west-1")
    members = idp.list_users_in_group(UserPoolId=deployed, GroupName=review.REVIEWERS_GROUP)["Users"]
    assert [u["Username"] for u in members] == ["reader@example.org"]
