"""The pure halves of infra/: typed configuration from context, and ASL extraction and resolution."""

from __future__ import annotations

import json

import pytest

from infra import asl, wiring
from infra.config import DEFAULT_GATE, DEMO_GATE, Config, ConfigError
from lambdas.domain import layout


def context(values: dict):
    return values.get


def test_defaults_are_the_documented_deployment():
    config = Config.from_context(context({}))
    assert config.endpoint_mode == "serverless" and config.training_instance_type == "ml.g4dn.xlarge"
    assert config.training_spot is True and config.reserved_concurrency is None
    assert config.explain_referrals is True
    assert dict(config.quality_gate) == DEFAULT_GATE
    assert config.spot_max_wait_s >= config.training_max_runtime_s


def test_command_line_strings_override_cdk_json_and_are_typed():
    config = Config.from_context(context({
        "cxr": {"stage": "prod", "endpoint_mode": "realtime", "serverless_memory_mb": 2048},
        "endpoint_mode": "async", "training_spot": "false", "reserved_concurrency": "5",
        "quality_gate": '{"accuracy": 0.9}', "notification_email": "ops@example.org",
        "explain_referrals": "false",
    }))
    assert config.explain_referrals is False
    assert (config.stage, config.endpoint_mode, config.serverless_memory_mb) == ("prod", "async", 2048)
    assert config.training_spot is False and config.reserved_concurrency == 5
    assert config.quality_gate == {"accuracy": 0.9}


def test_demo_profile_has_its_own_gate_unless_given_one():
    assert Config.demo().quality_gate == DEMO_GATE
    assert Config.demo().training_pretrained is True  # the demo trains the default network from ImageNet weights
    assert Config.from_values({"profile": "demo", "quality_gate": {"accuracy": 0.6}}).quality_gate == {"accuracy": 0.6}


@pytest.mark.parametrize("values, message", [
    ({"endpoint_mode": "gpu"}, "endpoint_mode"),
    ({"serverless_memory_mb": 1500}, "serverless_memory_mb"),
    ({"stage": "Prod_1"}, "stage"),
    ({"training_instance_type": "g4dn.xlarge"}, "training_instance_type"),
    ({"uncertainty_band": "0.2,0.8"}, "uncertainty_band: the referral band now follows each model's own threshold"),
    ({"log_retention_days": 100}, "log_retention_days"),
    ({"notification_email": "nobody"}, "notification_email"),
    ({"training_spot": "maybe"}, "training_spot"),
    ({"colour": "blue"}, "unknown settings: colour"),
])
def test_invalid_settings_are_refused_with_their_name(values, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_values(values)


def test_wiring_takes_prefixes_from_the_layout_module():
    both = (wiring.OBJECT_CREATED, wiring.OBJECT_REMOVED)  # a delete retires the key's outcome
    assert wiring.PREPROCESS.trigger == wiring.Trigger(wiring.DATA, layout.RAW, events=both)
    assert wiring.PREDICT.trigger == wiring.Trigger(wiring.INFERENCE, layout.INCOMING, events=both)
    assert set(wiring.TASK_FUNCTIONS.values()) <= set(wiring.FUNCTIONS)
    assert len(set(wiring.STATE_ORDER)) == len(wiring.STATE_ORDER)
    assert wiring.BUCKETS[wiring.DATA].name("dev", "123456789012", "eu-west-1") == "cxr-dev-data-123456789012-eu-west-1"
    longest = wiring.BUCKETS[wiring.ACCESS_LOGS].name("a" * 16, "123456789012", "ap-southeast-5")
    assert len(longest) <= 63  # S3's limit, for the longest stage and region names


TEMPLATE = {
    "Mappings": {"Images": {"eu-west-1": {"gpu": "img-eu"}}},
    "Resources": {
        "MachineABCDEF12": {
            "Type": asl.STATE_MACHINE_TYPE,
            "Metadata": {"aws:cdk:path": "Pipeline/Machine/Resource"},
            "Properties": {"DefinitionString": {"Fn::Join": ["", [
                '{"StartAt":"A","States":{"A":{"Type":"Task","Resource":"',
                {"Fn::GetAtt": ["FnAAAA1111", "Arn"]},
                '","Parameters":{"Image":"',
                {"Fn::FindInMap": ["Images", {"Ref": "AWS::Region"}, "gpu"]},
                '","Topic":"', {"Fn::ImportValue": "Storage:ExportsTopic"},
                '","Bucket":"', {"Fn::Sub": "cxr-${AWS::AccountId}-${Local}-${!Literal}", },
                '","Account":"', {"Fn::Select": [4, {"Fn::Split": [":", {"Fn::GetAtt": ["FnAAAA1111", "Arn"]}]}]},
                '"},"End":true}}}',
            ]]}},
        },
        "FnAAAA1111": {"Type": "AWS::Lambda::Function", "Metadata": {"aws:cdk:path": "Pipeline/Fn/Resource"}},
    },
}
STORAGE = {"Resources": {"Topic1234": {"Type": "AWS::SNS::Topic"}},
           "Outputs": {"T": {"Value": {"Ref": "Topic1234"}, "Export": {"Name": "Storage:ExportsTopic"}}}}


def test_definition_resolves_every_intrinsic_across_stacks():
    values = {"AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012", "Local": "x",
              "FnAAAA1111.Arn": "arn:aws:lambda:eu-west-1:123456789012:function:f", "Topic1234": "arn:topic"}
    definition = json.loads(asl.definition([TEMPLATE, STORAGE], values, "Machine"))
    params = definition["States"]["A"]["Parameters"]
    assert definition["States"]["A"]["Resource"] == values["FnAAAA1111.Arn"]
    assert params == {"Image": "img-eu", "Topic": "arn:topic", "Bucket": "cxr-123456789012-x-${Literal}",
                      "Account": "123456789012"}


def test_references_name_what_the_local_mode_must_provide():
    expression = asl.definition_expression([TEMPLATE, STORAGE], "Machine")
    by_name = {r.name: r for r in asl.references([TEMPLATE, STORAGE], expression)}
    assert by_name["FnAAAA1111.Arn"].resource_type == "AWS::Lambda::Function"
    assert by_name["FnAAAA1111.Arn"].path == "Pipeline/Fn/Resource"
    assert by_name["Topic1234"].resource_type == "AWS::SNS::Topic"  # reached through the export
    assert by_name["AWS::Region"].logical_id is None


def test_a_missing_value_is_named():
    with pytest.raises(asl.UnresolvedReference, match="Topic1234"):
        asl.definition([TEMPLATE, STORAGE], {"AWS::Region": "eu-west-1", "AWS::AccountId": "1", "Local": "x",
                                             "FnAAAA1111.Arn": "arn"}, "Machine")
    with pytest.raises(LookupError, match="expected one state machine"):
        asl.definition_expression([TEMPLATE], "Other")
