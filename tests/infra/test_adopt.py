"""The app in adopt mode (`cxr deploy` after a teardown that kept the data): nothing retained is created again.

AWS refuses to create a bucket whose name exists, and the retained objects are readable only with
the retained key, so the adopting templates must name both instead of creating them, and still
create what the deleted stacks owned beside them (bucket policies, log delivery, the key's alias,
the S3 triggers), cdk-nag and cfn-lint clean.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra import asl, wiring
from infra.config import Config, ConfigError

pytestmark = pytest.mark.slow

KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ADOPT = {"stage": "prod", "adopt_buckets": ",".join(wiring.BUCKETS), "adopt_key_arn": KEY_ARN}


@pytest.fixture(scope="module")
def adopted(module_dir, synth):
    """The whole app adopting the three buckets and the key (after the session's synthesis, reusing its caches)."""
    from infra.app import build, make_app

    outdir = module_dir("adopt.out")
    context = json.loads((Path(__file__).resolve().parents[2] / "cdk.json").read_text())["context"]
    app = make_app(outdir=str(outdir), context={**context, **ADOPT})
    stacks = build(app)
    assembly = app.synth()  # cdk-nag raises here on any unacknowledged finding
    templates = {part: assembly.get_stack_by_name(stack.stack_name).template for part, stack in stacks.items()}
    files = {part: outdir / stack.template_file for part, stack in stacks.items()}
    return templates, files


def resources(templates: dict, type_: str) -> dict:
    return {lid: r for t in templates.values() for lid, r in t["Resources"].items() if r["Type"] == type_}


def as_list(value):
    return value if isinstance(value, list) else [value]


def test_no_retained_resource_is_created_again(adopted):
    templates, _ = adopted
    buckets = resources(templates, "AWS::S3::Bucket")
    retained = {lid for lid, r in buckets.items() if r.get("DeletionPolicy") != "Delete"}
    assert retained == set()  # (the review page's bucket holds only code, and goes with its stack)
    assert resources(templates, "AWS::KMS::Key") == {}
    [alias] = resources(templates, "AWS::KMS::Alias").values()
    assert alias["Properties"] == {"AliasName": "alias/cxr-prod", "TargetKeyId": KEY_ARN}
    assert "Key" not in json.dumps([t.get("Outputs", {}) for t in templates.values()])  # no export of a key


def test_adopted_buckets_get_their_policies_back(adopted):
    templates, _ = adopted
    policies = {lid.split("Policy")[0]: r["Properties"]["PolicyDocument"]["Statement"]
                for lid, r in resources(templates, "AWS::S3::BucketPolicy").items()
                if not lid.startswith("PageBucket")}  # the review page's own bucket, created by its stack
    by_id = {bucket.construct_id: bucket for bucket in wiring.BUCKETS.values()}
    assert set(policies) == set(by_id)
    for construct_id, statements in policies.items():
        denies = [s for s in statements if s["Effect"] == "Deny"]
        assert [s["Condition"] for s in denies] == [{"Bool": {"aws:SecureTransport": "false"}},
                                                    {"NumericLessThan": {"s3:TlsVersion": 1.2}}], construct_id
        for deny in denies:
            assert deny["Principal"] == {"AWS": "*"} and deny["Action"] == "s3:*"
            arns = sorted(json.dumps(r) for r in deny["Resource"])
            assert all(f":s3:::cxr-prod-{by_id[construct_id].role}-" in arn for arn in arns)
            assert sorted(arn.endswith('"/*"]]}') for arn in arns) == [False, True]  # the bucket and its objects
    deliveries = [s for s in policies["AccessLogsBucket"] if s["Effect"] == "Allow"]
    assert {json.dumps(s["Resource"]).split("/")[-2] for s in deliveries} == {"DataBucket", "InferenceBucket"}
    for statement in deliveries:
        assert statement["Principal"] == {"Service": "logging.s3.amazonaws.com"}
        assert statement["Action"] == "s3:PutObject" and set(statement["Condition"]) == {"ArnLike", "StringEquals"}


def test_every_key_use_names_the_adopted_key(adopted):
    """The roles get the key in their identity policies; the retained key policy lets IAM decide (see deploy)."""
    templates, _ = adopted
    key_actions = {}
    for lid, policy in resources(templates, "AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = [a for a in as_list(statement["Action"]) if a.startswith("kms:")]
            if actions:
                assert as_list(statement["Resource"]) == [KEY_ARN], lid
                key_actions.setdefault(lid, set()).update(actions)
    for spec in wiring.deployed_functions("serverless"):  # the default synthesis (cdk.json)
        (actions,) = [a for lid, a in key_actions.items() if lid.startswith(f"{spec.id}Role")]
        assert "kms:Decrypt" in actions, spec.id
    for kind, prop in (("AWS::SQS::Queue", "KmsMasterKeyId"), ("AWS::SNS::Topic", "KmsMasterKeyId"),
                       ("AWS::Logs::LogGroup", "KmsKeyId")):
        assert {r["Properties"][prop] for r in resources(templates, kind).values()} == {KEY_ARN}, kind


def test_the_s3_triggers_are_written_into_the_adopted_buckets(adopted):
    templates, _ = adopted
    pseudo = {"AWS::AccountId": "123456789012", "AWS::Region": "eu-west-1", "AWS::Partition": "aws"}
    notified = {asl.resolve(r["Properties"]["BucketName"], pseudo)
                for r in resources(templates, "Custom::S3BucketNotifications").values()}
    assert notified == {wiring.BUCKETS[role].name("prod", "123456789012", "eu-west-1")
                        for role in (wiring.DATA, wiring.INFERENCE)}


@pytest.mark.parametrize("part", ["storage", "ingest", "inference", "pipeline", "monitoring"])
def test_cfn_lint_finds_no_error_in_adopt_mode(adopted, part):
    from cfnlint.api import lint_file

    _, files = adopted
    errors = [f"{m.rule.id} {m.message}" for m in lint_file(files[part]) if m.rule.id.startswith("E")]
    assert errors == []


def test_a_partial_adoption_still_delivers_access_logs_both_ways():
    """A kept data bucket with a new access-log bucket, and the other way round (the storage stack alone)."""
    from aws_cdk import Validations
    from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks

    from infra.app import make_app
    from infra.stacks.storage import StorageStack

    for roles, created_log_bucket in (([wiring.DATA], True), ([wiring.ACCESS_LOGS], False)):
        app = make_app()
        stack = StorageStack(app, "CxrProdStorage", config=Config.from_values({**ADOPT, "adopt_buckets": roles}))
        Validations.of(app).add_plugins(AwsSolutionsChecks(app), HIPAASecurityChecks(app))
        template = app.synth().get_stack_by_name(stack.stack_name).template
        buckets = [r for r in template["Resources"].values() if r["Type"] == "AWS::S3::Bucket"]
        assert len(buckets) == len(wiring.BUCKETS) - 1
        [logs_policy] = [r["Properties"]["PolicyDocument"] for lid, r in template["Resources"].items()
                         if lid.startswith("AccessLogsBucketPolicy")]
        delivered = {json.dumps(s["Resource"]).split("/")[-2] for s in logs_policy["Statement"]
                     if s.get("Principal") == {"Service": "logging.s3.amazonaws.com"}}
        assert delivered == {"DataBucket", "InferenceBucket"}, (roles, created_log_bucket)


@pytest.mark.parametrize(("values", "message"), [
    ({"adopt_buckets": "data"}, "adopting the data or inference bucket needs adopt_key_arn"),
    ({"adopt_buckets": "data,logs", "adopt_key_arn": KEY_ARN}, "adopt_buckets must name bucket roles"),
    ({"adopt_key_arn": "alias/cxr-dev"}, "adopt_key_arn must be a KMS key ARN"),
])
def test_adopt_settings_are_checked(values, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_values(values)
    assert Config.from_values({"adopt_buckets": "access-logs"}).adopt_buckets == ("access-logs",)
    assert Config.from_values({"adopt_key_arn": "none"}).adopt_key_arn is None
