"""`cxr deploy` / `cxr teardown` as commands: the exact CDK CLI invocation (subprocess faked) and one-line errors."""

import subprocess
from pathlib import Path

import boto3
import pytest

from cxr import deployment
from cxr.cli import main
from cxr.commands import deploy

ROOT = Path(__file__).resolve().parents[2]
CDK = ["npx", "--no", "--", "cdk"]
DEPLOY = [*CDK, "deploy", "--all", "--require-approval", "never"]


class Runs(list):
    """(command, cwd, region) of every CDK CLI run; ``statuses`` queues the exit statuses to return (default 0)."""

    statuses: list[int]


@pytest.fixture
def cdk_runs(monkeypatch):
    runs, statuses = Runs(), []

    def fake_run(command, cwd, env, check):
        runs.append((command, cwd, env.get("AWS_REGION")))
        return subprocess.CompletedProcess(command, statuses.pop(0) if statuses else 0)

    monkeypatch.setattr(deployment.subprocess, "run", fake_run)
    runs.statuses = statuses
    return runs


@pytest.fixture
def bootstrapped(aws):
    boto3.client("ssm").put_parameter(Name=deploy.BOOTSTRAP_PARAMETER, Value="30", Type="String")


def one_line_error(capsys, message: str) -> None:
    """The error is one ``cxr <command>: ...`` line; anything else on stderr is the echo of a CLI run."""
    *echoes, line = capsys.readouterr().err.splitlines()
    assert line.startswith("cxr ") and message in line, line
    assert all(echo.startswith("$ npx ") for echo in echoes), echoes


def test_dry_run_prints_the_exact_command_with_the_configuration(capsys, cdk_runs):
    argv = ["deploy", "--dry-run", "--stage", "prod", "--region", "eu-west-1", "-c", "endpoint_mode=realtime"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("AWS_REGION=eu-west-1 npx --no -- cdk deploy --all --require-approval never "
                      "-c endpoint_mode=realtime -c stage=prod")
    assert "CxrProdStorage" in out[1] and out[2].startswith("endpoint realtime")
    assert cdk_runs == []


def test_synth_only_runs_cdk_synth_from_the_project_root_without_credentials(capsys, cdk_runs):
    assert main(["deploy", "--synth-only", "--region", "eu-west-1", "-c", "serverless_memory_mb=4096"]) == 0
    assert cdk_runs == [([*CDK, "synth", "--quiet", "-c", "serverless_memory_mb=4096"], ROOT, "eu-west-1")]


def test_deploy_passes_the_stage_context_and_region_to_the_cli(capsys, cdk_runs, bootstrapped):
    assert main(["deploy", "--stage", "prod", "--region", "us-east-1", "-c", "training_spot=false"]) == 0
    assert cdk_runs == [([*DEPLOY, "-c", "training_spot=false", "-c", "stage=prod"], ROOT, "us-east-1")]
    assert "cxr-prod-data-123456789012-us-east-1" in capsys.readouterr().out


def test_deploy_with_a_profile_hands_it_to_the_cli(monkeypatch, cdk_runs, bootstrapped):
    monkeypatch.setattr(boto3, "Session", lambda profile_name=None, region_name=None: boto3.session.Session(
        region_name=region_name))
    assert main(["deploy", "--profile", "hospital"]) == 0
    assert cdk_runs[0][0] == [*DEPLOY, "-c", "stage=dev", "--profile", "hospital"]


def test_an_account_never_bootstrapped_is_one_line_or_bootstrapped_on_request(capsys, cdk_runs, aws):
    assert main(["deploy"]) == 1
    one_line_error(capsys, "account 123456789012 is not bootstrapped for CDK in us-east-1: "
                           "run `cxr deploy --bootstrap`")
    assert cdk_runs == []
    assert main(["deploy", "--bootstrap"]) == 0
    assert [run[0] for run in cdk_runs] == [[*CDK, "bootstrap", "aws://123456789012/us-east-1"],
                                           [*DEPLOY, "-c", "stage=dev"]]


def test_a_failing_cdk_deploy_is_one_line_with_the_way_out(capsys, cdk_runs, bootstrapped):
    cdk_runs.statuses.append(3)
    assert main(["deploy"]) == 1
    one_line_error(capsys, "cdk deploy failed with exit status 3")


def test_a_bad_setting_fails_before_the_cli_runs(capsys, cdk_runs):
    assert main(["deploy", "--synth-only", "-c", "endpoint_mode=batch"]) == 1
    one_line_error(capsys, "endpoint_mode must be one of serverless, realtime, async")
    assert cdk_runs == []


@pytest.mark.parametrize("command", [["deploy", "--synth-only"], ["teardown"]])
def test_cdk_cli_not_installed(command, capsys, cdk_runs, monkeypatch, tmp_path):
    monkeypatch.setattr(deployment, "CDK_BIN", tmp_path / "node_modules" / ".bin" / "cdk")
    assert main(command) == 1
    one_line_error(capsys, "the CDK CLI is not installed: run `make setup`")


def test_node_not_installed(capsys, cdk_runs, monkeypatch):
    monkeypatch.setattr(deployment.shutil, "which", lambda name: None)
    assert main(["deploy", "--synth-only"]) == 1
    one_line_error(capsys, "Node.js is not installed (no `npx` on PATH)")


@pytest.fixture
def no_aws_config(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.parametrize("command", [["deploy"], ["teardown"]])
def test_missing_credentials(command, capsys, cdk_runs, no_aws_config):
    assert main(command) == 1
    one_line_error(capsys, "no AWS credentials found: run `aws configure`")


@pytest.mark.parametrize("command", [["deploy"], ["teardown"]])
def test_missing_region(command, capsys, cdk_runs, no_aws_config, monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert main(command) == 1
    one_line_error(capsys, "no AWS region configured")


def test_teardown_in_a_region_where_nothing_is_deployed(capsys, cdk_runs, aws):
    assert main(["teardown", "--region", "eu-west-1"]) == 1
    one_line_error(capsys, "nothing of stage dev is deployed in eu-west-1 (account 123456789012): pass the right "
                           "--region")
    assert cdk_runs == []


def test_deploy_refuses_the_offline_cloud(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["deploy", "--local"])
    assert exit_.value.code == 2 and "`cxr local up`" in capsys.readouterr().err


TEMPLATE = '{"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}}'


def test_teardown_runs_cdk_destroy_with_the_stage_and_verifies_the_stacks_are_gone(capsys, monkeypatch, aws):
    cloudformation = boto3.client("cloudformation")
    cloudformation.create_stack(StackName="CxrQaStorage", TemplateBody=TEMPLATE)
    runs = []

    def fake_run(command, cwd, env, check):  # what `cdk destroy` does to the stacks
        runs.append((command, env["AWS_REGION"]))
        cloudformation.delete_stack(StackName="CxrQaStorage")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(deployment.subprocess, "run", fake_run)
    assert main(["teardown", "--stage", "qa", "--wait", "0"]) == 0
    assert runs == [([*CDK, "destroy", "--all", "--force", "-c", "stage=qa"], "us-east-1")]
    out = capsys.readouterr().out
    assert "Left: nothing billable" in out


def test_teardown_fails_when_a_stack_survives_cdk_destroy(capsys, cdk_runs, aws):
    boto3.client("cloudformation").create_stack(StackName="CxrQaInference", TemplateBody=TEMPLATE)
    assert main(["teardown", "--stage", "qa", "--wait", "0"]) == 1
    out = capsys.readouterr().out
    assert "Left (still billable):\n  stack CxrQaInference (CREATE_COMPLETE)" in out


def test_teardown_dry_run_changes_nothing(capsys, cdk_runs, aws):
    boto3.client("cloudformation").create_stack(StackName="CxrQaInference", TemplateBody=TEMPLATE)
    assert main(["teardown", "--stage", "qa", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "stack CxrQaInference" in out and "then: npx --no -- cdk destroy --all --force -c stage=qa" in out
    assert cdk_runs == []
