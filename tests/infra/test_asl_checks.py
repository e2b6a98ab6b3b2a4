"""The ASL checks of ``make test``: the synthesized state machine passes ``asl-validator`` (npm, installed by the
Makefile's ``npm ci``) and the project's intrinsic-literal check; known-bad definitions fail what catches them.

moto's engine validates no definition, so these are what stands between a definition AWS refuses and a
deploy. What each check catches is asserted as it is: ``asl-validator`` parses intrinsic calls but takes
unescaped ``{`` ``}`` and lone ``\\`` in their string literals, which AWS refuses; the project check
(infra/asl_lint.py) looks at those literals only and leaves function names and paths to the validator.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from infra import asl, asl_lint, wiring

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = ROOT / "node_modules" / ".bin" / "asl-validator"
KNOWN_BAD = json.loads((Path(__file__).parent / "fixtures" / "known_bad_asl.json").read_text())
ACCOUNT, REGION = "123456789012", "eu-west-1"
ARNS = {
    "AWS::Lambda::Function": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{{}}",
    "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT}:role/{{}}",
    "AWS::KMS::Key": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "AWS::SNS::Topic": f"arn:aws:sns:{REGION}:{ACCOUNT}:{{}}",
}


def deployed_definition(synth) -> dict:
    """The ASL as a deployment resolves it, with ARNs shaped as AWS's (asl-validator checks Resource ARNs)."""
    templates = list(synth.templates.values())
    expression = asl.definition_expression(templates, wiring.STATE_MACHINE_ID)
    values = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws", "AWS::URLSuffix":
              "amazonaws.com"}
    for reference in asl.references(templates, expression):
        if reference.logical_id is not None:
            values[reference.name] = ARNS[reference.resource_type].format(reference.logical_id)
    return json.loads(asl.definition(templates, values, wiring.STATE_MACHINE_ID))


def asl_validator(definition: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    assert VALIDATOR.exists(), "asl-validator is missing: `make setup` (npm ci) installs it from package-lock.json"
    path = tmp_path / "definition.asl.json"
    path.write_text(json.dumps(definition))
    return subprocess.run([str(VALIDATOR), "--json-path", str(path)], capture_output=True, text=True, timeout=60)


def test_the_synthesized_definition_passes_asl_validator(synth, tmp_path):
    result = asl_validator(deployed_definition(synth), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_synthesized_definition_passes_the_intrinsic_literal_check(synth):
    definition = deployed_definition(synth)
    assert [str(f) for f in asl_lint.check(definition)] == []
    found = dict(asl_lint.intrinsic_expressions(definition))
    states = {location.split("/")[2] for location in found}
    assert {wiring.APPLY_DEFAULTS_STATE, wiring.TRAIN_STATE, wiring.COUNT_TRAINING_RETRY_STATE} <= states, found


def test_request_defaults_are_a_json_value_not_a_string_literal(synth):
    """Issue 13, item 1: ReadRequest built them with States.StringToJson('{...}'), which AWS refuses."""
    states = deployed_definition(synth)["States"]
    assert states[wiring.READ_REQUEST_STATE]["Parameters"]["defaults"] == {"hyperparameters": {}}
    merge = states[wiring.APPLY_DEFAULTS_STATE]["Parameters"]["request.$"]
    assert merge == "States.JsonMerge($.defaults, $.request, false)"


VALIDATOR_CATCHES = {
    "read_request_before_issue_13": False,
    "unescaped_quote": True,
    "lone_backslash": False,
    "braces_in_a_map_item_selector": False,
    "format_without_its_value": False,
}


@pytest.mark.parametrize("name", sorted(VALIDATOR_CATCHES))
def test_known_bad_definitions_fail_the_checks_that_catch_them(name, tmp_path):
    definition = KNOWN_BAD[name]
    assert asl_lint.check(definition), f"the project check passes {name}"
    result = asl_validator(definition, tmp_path)
    assert (result.returncode != 0) is VALIDATOR_CATCHES[name], result.stdout + result.stderr
    assert set(KNOWN_BAD) - {"_comment"} == set(VALIDATOR_CATCHES)


@pytest.mark.parametrize("parameters", [
    {"x.$": "States.NoSuchFunction($.a)"},
    {"x.$": "States.Format('{}', $..[?(@.a ==)])"},
])
def test_asl_validator_catches_what_the_project_check_leaves_to_it(parameters, tmp_path):
    definition = {"StartAt": "A", "States": {"A": {"Type": "Pass", "Parameters": parameters, "End": True}}}
    assert asl_lint.check(definition) == []
    assert asl_validator(definition, tmp_path).returncode != 0
