"""`cxr doctor`: every check against a moto account, quotas seeded in botocore's own response shape.

moto serves Service Quotas for VPC only, so SageMaker quotas come from a botocore ``Stubber`` on a
real service-quotas client (it validates every seeded page against the service model) or from a
saved listing (``--quotas FILE``), the two seams the command has.
"""

import datetime
import json
from importlib import metadata
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from cxr import quotas, target
from cxr.cli import main
from cxr.commands import deploy, doctor
from infra import wiring
from infra.config import Config

ACCOUNT, REGION = "123456789012", "us-east-1"
SPOT_G4DN = "ml.g4dn.xlarge for spot training job usage"
ENDPOINT_C6I = "ml.c6i.large for endpoint usage"
# L-944F78BB and L-96300102 are the codes public material gives for these two quotas; the others are made up:
# the command reads codes from the listing, never from a table.
CODES = {SPOT_G4DN: "L-944F78BB", quotas.SERVERLESS_CONCURRENCY: "L-96300102", ENDPOINT_C6I: "L-1194D53C",
         "ml.g4dn.xlarge for training job usage": "L-3F53BA1C", "ml.m5.large for training job usage": "L-7A2E5D21",
         "ml.m5.large for endpoint usage": "L-0F7A3BB4"}


def quota(name: str, value: float, *, adjustable: bool = True) -> dict:
    """One ``ServiceQuota`` as ListServiceQuotas returns it."""
    code = CODES[name]
    return {"ServiceCode": "sagemaker", "ServiceName": "Amazon SageMaker",
            "QuotaArn": f"arn:aws:servicequotas:{REGION}:{ACCOUNT}:sagemaker/{code}", "QuotaCode": code,
            "QuotaName": name, "Value": float(value), "Unit": "None", "Adjustable": adjustable, "GlobalQuota": False,
            "QuotaAppliedAtLevel": "ACCOUNT"}


class Account:
    """A service-quotas client seeded page by page; ``applied`` and ``defaults`` are lists of pages."""

    def __init__(self, applied: list[list[dict]], defaults: list[list[dict]] = ()):
        self.client = boto3.client("service-quotas", region_name=REGION)
        self.stubber = Stubber(self.client)
        for operation, pages in (("list_service_quotas", applied), ("list_aws_default_service_quotas", defaults)):
            for number, page in enumerate(pages):
                response = {"Quotas": page} | ({"NextToken": f"page-{number + 1}"} if number + 1 < len(pages) else {})
                request = {"ServiceCode": "sagemaker", "MaxResults": 100} | (
                    {"NextToken": f"page-{number}"} if number else {})
                self.stubber.add_response(operation, response, request)
        self.stubber.activate()

    def source(self) -> quotas.ServiceQuotasApi:
        return quotas.ServiceQuotasApi(self.client)


@pytest.fixture
def tgt(aws) -> target.Target:
    return target.Target(session=boto3.Session(region_name=REGION), stage="dev", account=ACCOUNT, region=REGION)


@pytest.fixture
def bootstrapped(aws):
    boto3.client("ssm").put_parameter(Name=deploy.BOOTSTRAP_PARAMETER, Value="30", Type="String")


def saved_listing(tmp_path, *quota_list) -> Path:
    """What `aws service-quotas list-service-quotas --service-code sagemaker` prints (the CLI joins the pages)."""
    path = tmp_path / "quotas.json"
    path.write_text(json.dumps({"Quotas": list(quota_list)}))
    return path


GREEN = [quota(SPOT_G4DN, 2), quota(quotas.SERVERLESS_CONCURRENCY, 10)]


def levels(findings) -> dict[str, list[str]]:
    by_level = {}
    for finding in findings:
        by_level.setdefault(finding.level, []).append(finding.check)
    return by_level


def test_an_all_green_account_has_only_ok_findings(tgt, bootstrapped):
    account = Account(applied=[GREEN])
    findings = doctor.diagnose(tgt, Config(), account.source())
    assert levels(findings) == {"ok": ["bootstrap", "quota", "quota", "retained"]}
    assert f"'{SPOT_G4DN}' is 2 (L-944F78BB)" in findings[1].message
    account.stubber.assert_no_pending_responses()


def test_a_fresh_account_reads_defaults_and_zero_spot_quota_blocks_with_the_request_command(tgt, bootstrapped):
    """ListServiceQuotas leaves out quotas never changed: their values come from the defaults, paginated."""
    unrelated = quota("ml.m5.large for training job usage", 15)
    account = Account(applied=[[unrelated], [quota("ml.m5.large for endpoint usage", 4)]],
                      defaults=[[unrelated], [quota(SPOT_G4DN, 0), quota(quotas.SERVERLESS_CONCURRENCY, 10)]])
    findings = doctor.diagnose(tgt, Config(), account.source())
    account.stubber.assert_no_pending_responses()
    [blocker] = [f for f in findings if f.level == "blocker"]
    assert blocker.message.startswith(f"'{SPOT_G4DN}' is 0 (L-944F78BB)")
    assert blocker.fix == ("aws service-quotas request-service-quota-increase --service-code sagemaker "
                           "--quota-code L-944F78BB --desired-value 1 --region us-east-1")


def test_on_demand_training_and_a_realtime_endpoint_look_up_their_own_quotas(tgt, bootstrapped):
    config = Config(training_spot=False, endpoint_mode="realtime")
    account = Account(applied=[[quota("ml.g4dn.xlarge for training job usage", 1), quota(ENDPOINT_C6I, 1)]])
    findings = doctor.diagnose(tgt, config, account.source())
    [training, endpoint] = [f for f in findings if f.check == "quota"]
    assert training.level == "ok" and "'ml.g4dn.xlarge for training job usage' is 1" in training.message
    # one instance serves the first model; the blue/green update to the next needs two
    assert endpoint.level == "warning" and "2 needed for the next model's in-place update" in endpoint.message
    assert "--quota-code L-1194D53C --desired-value 2" in endpoint.fix


def test_serverless_concurrency_below_the_configured_maximum_blocks(tgt, bootstrapped, tmp_path):
    source = quotas.SavedListing(saved_listing(tmp_path, quota(SPOT_G4DN, 1), quota(quotas.SERVERLESS_CONCURRENCY, 10)))
    findings = doctor.diagnose(tgt, Config(serverless_max_concurrency=20), source)
    [blocker] = [f for f in findings if f.level == "blocker"]
    assert "serverless_max_concurrency=20" in blocker.message and "--desired-value 20" in blocker.fix


def test_an_instance_type_without_a_quota_and_unreadable_quotas_are_warnings(tgt, bootstrapped):
    account = Account(applied=[GREEN], defaults=[[]])
    findings = doctor.diagnose(tgt, Config(training_instance_type="ml.g9.xlarge"), account.source())
    [missing] = [f for f in findings if f.level == "warning"]
    assert "no quota named 'ml.g9.xlarge for spot training job usage' in us-east-1" in missing.message

    denied = Account(applied=[])
    denied.stubber.add_client_error("list_service_quotas", "AccessDeniedException", "not authorized")
    [finding] = doctor.quota_findings(Config(), denied.source(), REGION)
    assert finding.level == "warning" and "servicequotas:ListServiceQuotas" in finding.fix


def retained_data_bucket(tgt, *, encryption: str = "aws:kms") -> tuple[str, str]:
    """The data bucket and its key as a teardown without --delete-data leaves them: no storage stack around them."""
    statements = [{"Sid": "Root", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                   "Action": "kms:*", "Resource": "*"}]
    statements += [{"Sid": sid, "Effect": "Allow", "Principal": {"Service": f"logs.{REGION}.amazonaws.com"},
                    "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:GenerateDataKey*"], "Resource": "*"}
                   for sid in wiring.KEY_SERVICE_STATEMENTS]
    key = boto3.client("kms").create_key(Policy=json.dumps({"Version": "2012-10-17", "Statement": statements}))
    key_arn, bucket = key["KeyMetadata"]["Arn"], tgt.bucket(wiring.DATA)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    default = {"SSEAlgorithm": encryption} | ({"KMSMasterKeyID": key_arn} if encryption == "aws:kms" else {})
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": default, "BucketKeyEnabled": True}]})
    return bucket, key_arn


def test_retained_bucket_and_key_are_warnings_that_say_the_redeploy_re_adopts_them(tgt, bootstrapped, tmp_path,
                                                                                      capsys):
    bucket, key_arn = retained_data_bucket(tgt)
    retained = doctor.retained_findings(tgt)
    assert [(f.level, f.message.split(" was kept")[0]) for f in retained] == [
        ("warning", f"bucket {bucket}"), ("warning", f"key {key_arn}")]
    assert all("`cxr deploy` re-adopts it" in f.message for f in retained)
    # warnings only: the command still exits 0
    assert main(["doctor", "--region", REGION, "--quotas", str(saved_listing(tmp_path, *GREEN))]) == 0
    assert f"warning  retained     bucket {bucket} was kept by an earlier teardown of stage dev in us-east-1: " \
           "`cxr deploy` re-adopts it" in capsys.readouterr().out


def test_a_retained_bucket_a_deploy_cannot_adopt_blocks_with_the_reason(tgt):
    bucket, _ = retained_data_bucket(tgt, encryption="AES256")
    [finding] = doctor.retained_findings(tgt)
    assert finding.level == "blocker" and finding.message.startswith(f"bucket {bucket}, kept by an earlier teardown")
    assert finding.fix.startswith("its default encryption is AES256, not SSE-KMS")


def test_buckets_of_a_deployed_storage_stack_are_not_retained(tgt):
    bucket = tgt.bucket(wiring.DATA)
    boto3.client("cloudformation").create_stack(StackName=wiring.stack_name("dev", "Storage"), TemplateBody=json.dumps(
        {"Resources": {"Data": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": bucket}}}}))
    assert boto3.client("s3").head_bucket(Bucket=bucket)
    [finding] = doctor.retained_findings(tgt)
    assert (finding.level, finding.message) == ("ok", "nothing of stage dev in us-east-1 is left from an earlier "
                                                      "teardown")


def test_an_image_past_its_end_of_patch_is_a_warning_that_names_the_way_out():
    [patched] = doctor.image_findings(datetime.date(2026, 6, 30))  # the serving image's last patched day
    assert patched.level == "ok" and patched.message == "every pinned container image is patched on 2026-06-30"
    [serving] = doctor.image_findings(datetime.date(2026, 7, 1))
    assert serving.level == "warning"
    assert serving.message.startswith("serving image pytorch 2.6.0 (py312) passed its end of patch on 2026-06-30; ")
    assert [f.message.split()[0] for f in doctor.image_findings(datetime.date(2027, 8, 1))] == ["training", "serving"]


def test_a_missing_bootstrap_blocks_with_the_bootstrap_command(tgt):
    finding = doctor.bootstrap(tgt)
    assert finding.level == "blocker"
    assert finding.message == "account 123456789012 is not bootstrapped for CDK in us-east-1"
    assert finding.fix.startswith("npx cdk bootstrap aws://123456789012/us-east-1")


def test_a_toolkit_stack_without_its_version_parameter_or_too_old_a_version_blocks(tgt):
    boto3.client("cloudformation").create_stack(StackName="CDKToolkit", TemplateBody=json.dumps(
        {"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}}))
    finding = doctor.bootstrap(tgt)
    assert finding.level == "blocker" and "stack CDKToolkit is CREATE_COMPLETE but" in finding.message

    boto3.client("ssm").put_parameter(Name=deploy.BOOTSTRAP_PARAMETER, Value="5", Type="String")
    finding = doctor.bootstrap(tgt)
    assert finding.level == "blocker"
    assert f"version 5 in us-east-1; aws-cdk-lib {metadata.version('aws-cdk-lib')} needs 6 or later" in finding.message


@pytest.mark.slow
def test_the_pinned_cdk_library_needs_no_newer_bootstrap_than_the_check_accepts(tmp_path):
    """Synthesizes with the pinned aws-cdk-lib and the app's flags: a library upgrade that raises the bar fails here."""
    from aws_cdk import Stack, aws_s3_assets, aws_sns

    from infra.app import make_app

    app = make_app(outdir=str(tmp_path / "cdk.out"))
    (tmp_path / "asset.txt").write_text("x")
    probe = Stack(app, "Probe")
    aws_s3_assets.Asset(probe, "File", path=str(tmp_path / "asset.txt"))
    aws_sns.Topic(probe, "Topic")  # a template needs one resource
    app.synth()
    manifest = json.loads((tmp_path / "cdk.out" / "manifest.json").read_text())
    required = {artifact["properties"]["requiresBootstrapStackVersion"]
                for artifact in manifest["artifacts"].values() if "requiresBootstrapStackVersion" in
                artifact.get("properties", {})}
    assert required == {doctor.MIN_BOOTSTRAP_VERSION}
    assert {a["properties"].get("bootstrapStackVersionSsmParameter") for a in manifest["artifacts"].values()
            if "requiresBootstrapStackVersion" in a.get("properties", {})} == {deploy.BOOTSTRAP_PARAMETER}


def test_the_command_prints_one_line_per_finding_and_exits_0_when_nothing_blocks(capsys, tmp_path, bootstrapped):
    assert main(["doctor", "--region", REGION, "--quotas", str(saved_listing(tmp_path, *GREEN))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[:5]] == [
        ["ok", "region"], ["ok", "credentials"], ["ok", "bootstrap"], ["ok", "quota"], ["ok", "quota"]]
    assert lines[-1].startswith("no blockers")


def test_the_command_exits_1_on_a_blocker_and_reports_json(capsys, tmp_path, aws):
    listing = str(saved_listing(tmp_path, quota(SPOT_G4DN, 0), quota(quotas.SERVERLESS_CONCURRENCY, 10)))
    assert main(["doctor", "--region", REGION, "--quotas", listing, "--json"]) == 1
    findings = json.loads(capsys.readouterr().out)
    blockers = [(f["check"], f["fix"].split()[:3]) for f in findings if f["level"] == "blocker"]
    assert blockers == [("bootstrap", ["npx", "cdk", "bootstrap"]), ("quota", ["aws", "service-quotas",
                                                                            "request-service-quota-increase"])]
    assert main(["doctor", "--region", REGION, "--quotas", listing, "-c", "training_spot=false"]) == 1
    assert "no quota named 'ml.g4dn.xlarge for training job usage'" in capsys.readouterr().out


def test_missing_credentials_or_region_block_and_stop_the_account_checks(capsys, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert main(["doctor"]) == 1
    assert capsys.readouterr().out.splitlines()[0] == ("blocker  region       no AWS region configured; fix: pass "
                                                       "--region, set AWS_REGION, or `aws configure set region REGION`")
    assert main(["doctor", "--region", "eu-west-1"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ok       region       eu-west-1")
    assert out[1].startswith("blocker  credentials  no AWS credentials found")
    assert out[2].split()[1] == "images"  # the project's own checks still run; the account's cannot
    assert main(["doctor", "--region", "eu-west-9"]) == 1
    assert "'eu-west-9' is not a region where SageMaker is offered" in capsys.readouterr().out
    assert main(["doctor", "--profile", "nobody"]) == 1
    assert "no AWS profile named 'nobody'" in capsys.readouterr().out


def test_a_listing_that_is_not_list_service_quotas_output_is_a_usage_error(tmp_path, capsys, aws):
    bad = tmp_path / "quotas.json"
    bad.write_text(json.dumps([{"QuotaName": SPOT_G4DN}]))
    with pytest.raises(SystemExit) as exited:
        main(["doctor", "--region", REGION, "--quotas", str(bad)])
    assert exited.value.code == 2 and "not a saved `aws service-quotas list-service-quotas" in capsys.readouterr().err
