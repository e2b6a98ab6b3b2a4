"""Each stage's SageMaker names and IAM grants are its own: no stage's pattern matches another stage's names."""

from __future__ import annotations

import fnmatch
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from infra import asl, wiring
from infra.config import Config, ConfigError

SAGEMAKER_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
"""TrainingJobName / ModelName / EndpointConfigName in SageMaker's API reference."""
UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
PSEUDO = {"AWS::Partition": "aws", "AWS::Region": "us-east-1", "AWS::AccountId": "123456789012"}
KINDS = ("training-job", "model", "endpoint-config")


def stage_names():
    """Any stage ``infra.config`` accepts: the generator draws from its rule, the filter asks the class itself."""
    from infra.config import _STAGE

    def valid(stage: str) -> bool:
        try:
            Config(stage=stage)
        except ConfigError:
            return False
        return True

    return st.from_regex(_STAGE.pattern, fullmatch=True).filter(valid)


def job_name(stage: str, attempt: int = 0) -> str:
    """A name as the Train state builds it (``States.Format('<prefix>{}-{}', RetryCount, UUID)``)."""
    return f"{wiring.resource_prefix(stage)}{attempt}-{UUID}"


def iam_match(pattern: str, arn: str) -> bool:
    """IAM's resource matching: ``*`` any run of characters, ``?`` one, case-sensitive."""
    return fnmatch.fnmatchcase(arn, pattern.replace("[", "[[]"))


@given(a=stage_names(), b=stage_names())
@example(a="dev", b="dev-x")
@example(a="dev", b="dev2")
@example(a="a", b="a1")
@example(a="a1", b="a12345678901")
@example(a="dev", b="dev-")
def test_no_stage_pattern_matches_another_stages_names(a, b):
    if a == b:
        return
    for attempt in (0, 3, 42):
        name = job_name(b, attempt)
        assert not iam_match(f"{wiring.resource_prefix(a)}*", name), (a, b, name)
    assert not wiring.resource_prefix(b).startswith(wiring.resource_prefix(a))


@given(stage=stage_names())
@example(stage="a234567890123456")
def test_every_stage_makes_valid_sagemaker_names_that_its_own_pattern_matches(stage):
    for attempt in (0, 99):  # the Train state's RetryCount: two digits leave room for any retry policy
        name = job_name(stage, attempt)
        assert len(name) <= wiring.SAGEMAKER_NAME_MAX and SAGEMAKER_NAME.match(name), name
        assert name == name.lower()  # SageMaker lower-cases names in ARNs: the IAM patterns must too
        assert iam_match(f"{wiring.resource_prefix(stage)}*", name)


def sagemaker_statements(template: dict) -> list[tuple[list[str], list[str]]]:
    """(actions, resolved resources) of every statement that grants SageMaker actions."""
    found = []
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::IAM::Policy":
            continue
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if statement["Effect"] == "Allow" and any(a.startswith("sagemaker:") for a in actions):
                resources = statement["Resource"] if isinstance(statement["Resource"], list) else [
                    statement["Resource"]]
                found.append((actions, [asl.resolve(r, PSEUDO) for r in resources]))
    return found


def arn(kind: str, name: str) -> str:
    return f"arn:aws:sagemaker:us-east-1:123456789012:{kind}/{name}"


@pytest.mark.slow
def test_a_dev_stacks_policies_reach_no_prod_resource(synth):
    """``cdk.json``'s stage ``dev``: its roles may not touch stage ``prod``'s (or ``dev-x``'s) jobs, models, configs."""
    statements = [s for t in synth.templates.values() for s in sagemaker_statements(t)]
    patterns = [p for _, resources in statements for p in resources if p != "*"]
    assert patterns
    for kind in KINDS:
        assert any(iam_match(p, arn(kind, job_name("dev"))) for p in patterns), kind  # the stage's own: granted
        for other in ("prod", "dev-x", "dev2"):
            granted = [p for p in patterns if iam_match(p, arn(kind, job_name(other)))]
            assert granted == [], (kind, other, granted)
    assert not any(iam_match(p, arn("endpoint", wiring.endpoint_name("prod"))) for p in patterns)
    assert not any(iam_match(p, arn("endpoint", wiring.endpoint_name("dev-x"))) for p in patterns)


@pytest.mark.slow
def test_the_status_function_may_touch_exactly_its_stages_configurations_and_models(synth):
    """The grant the retirement test's IAM stand-in enforces (tests/infra/test_pipeline_lambdas.py) is the stack's."""
    [(actions, resources)] = [s for s in sagemaker_statements(synth.template("pipeline"))
                              if "sagemaker:DeleteModel" in s[0]]  # the state machine's .sync grant has ListTags too
    assert sorted(actions) == ["sagemaker:DeleteEndpointConfig", "sagemaker:DeleteModel", "sagemaker:ListTags"]
    prefix = wiring.resource_prefix("dev")
    assert sorted(resources) == [arn("endpoint-config", f"{prefix}*"), arn("model", f"{prefix}*")]
