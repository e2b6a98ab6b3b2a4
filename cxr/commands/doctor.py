"""`cxr doctor`: check an AWS account before the first deploy, one line per finding.

Credentials, region, the CDK bootstrap, the SageMaker quotas the configured instance types use,
what an earlier teardown retained (`cxr deploy` re-adopts it), and container images past their end
of patching: each is ok, a warning, or a blocker with its fix. Exit status 1 when anything blocks a deploy or the first
training run.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)

from cxr import deployment, quotas, target
from cxr.commands.deploy import BOOTSTRAP_PARAMETER
from cxr.errors import UserError
from infra import images
from infra.config import Config

OK, WARNING, BLOCKER = "ok", "warning", "blocker"

MIN_BOOTSTRAP_VERSION = 6
"""What the pinned aws-cdk-lib's DefaultStackSynthesizer writes as ``requiresBootstrapStackVersion``
into every stack and asset manifest (its templates' ``CheckBootstrapVersion`` rule refuses 1-5);
a test synthesizes with the pinned library and fails when it asks for more."""

TOOLKIT_STACK = "CDKToolkit"
"""The stack `cdk bootstrap` deploys; it writes :data:`BOOTSTRAP_PARAMETER`."""


@dataclass(frozen=True)
class Finding:
    check: str
    level: str
    message: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.level:<8} {self.check:<12} {self.message}" + (f"; fix: {self.fix}" if self.fix else "")


OFFLINE_BOOTSTRAP = Finding("bootstrap", OK, "the offline cloud needs no CDK bootstrap (it is built from the "
                                             "synthesized templates)")
OFFLINE_QUOTAS = Finding("quota", OK, "not applicable: the offline cloud trains and serves on this machine "
                                      "(--quotas FILE checks a saved listing)")
OFFLINE_RETAINED = Finding("retained", OK, "not applicable: the offline cloud has no stacks; its buckets live as "
                                           "long as it runs")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check an AWS account before the first deploy (credentials, bootstrap, quotas, leftovers)",
        description=__doc__.split("\n\n")[1],
    )
    target.add_arguments(parser)
    deployment.add_context_argument(parser)
    parser.add_argument("--quotas", type=Path, metavar="FILE",
                        help="check the quotas in a saved `aws service-quotas list-service-quotas --service-code "
                             "sagemaker` listing instead of asking Service Quotas")
    parser.add_argument("--json", action="store_true", help="the findings as a JSON list")
    parser.set_defaults(run=run)


def run(args) -> int:
    overrides = deployment.stage_overrides(args)
    config = deployment.project_config(overrides)
    saved = quotas.SavedListing(args.quotas) if args.quotas else None
    if args.local:
        tgt = target.local_target(args.stage)
        findings = [Finding("credentials", OK, f"offline cloud at {tgt.endpoint_url}, stage {tgt.stage}")]
    else:
        tgt, findings = connect(args.profile, args.region, config.stage)
    if tgt is not None:
        findings += diagnose(tgt, config, saved)
    findings += image_findings(datetime.date.today())
    report(findings, as_json=args.json)
    return 1 if any(f.level == BLOCKER for f in findings) else 0


def connect(profile: str | None, region: str | None, stage: str) -> tuple[target.Target | None, list[Finding]]:
    """Region and credentials; no target (and no further AWS checks) when either blocks."""
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
    except ProfileNotFound:
        return None, [Finding("credentials", BLOCKER, f"no AWS profile named {profile!r}",
                              "`aws configure --profile NAME`, or pass an existing --profile")]
    region = session.region_name
    if not region:
        return None, [Finding("region", BLOCKER, "no AWS region configured",
                              "pass --region, set AWS_REGION, or `aws configure set region REGION`")]
    known = {r for partition in session.get_available_partitions()
             for r in session.get_available_regions("sagemaker", partition_name=partition)}
    if region not in known:
        return None, [Finding("region", BLOCKER, f"{region!r} is not a region where SageMaker is offered",
                              "pass --region with a region such as us-east-1 or eu-west-1")]
    findings = [Finding("region", OK, region)]
    try:
        identity = session.client("sts", region_name=region).get_caller_identity()
    except (NoCredentialsError, PartialCredentialsError):
        return None, [*findings, Finding("credentials", BLOCKER, "no AWS credentials found",
                                         "`aws configure` (or `aws sso login`, or set AWS_PROFILE)")]
    except ClientError as exc:
        return None, [*findings, Finding("credentials", BLOCKER,
                                         f"AWS refused the credentials: {exc.response['Error'].get('Message', exc)}",
                                         "renew them (`aws sso login`, or new access keys)")]
    except BotoCoreError as exc:
        return None, [*findings, Finding("credentials", BLOCKER, f"cannot reach STS in {region}: {exc}",
                                         "check the network, the proxy and --region")]
    findings.append(Finding("credentials", OK, f"{identity['Arn']} (account {identity['Account']})"))
    return target.Target(session=session, stage=stage, account=identity["Account"], region=region), findings


def diagnose(tgt: target.Target, config: Config, saved: quotas.QuotaSource | None) -> list[Finding]:
    """The account checks after the credentials; ``saved`` replaces the Service Quotas API when given."""
    local = tgt.is_local
    findings = [OFFLINE_BOOTSTRAP if local else bootstrap(tgt)]
    if local and saved is None:
        findings.append(OFFLINE_QUOTAS)
    else:
        findings += quota_findings(config, saved or quotas.ServiceQuotasApi(tgt.client("service-quotas")), tgt.region)
    return findings + ([OFFLINE_RETAINED] if local else retained_findings(tgt))


def bootstrap(tgt: target.Target) -> Finding:
    """The version `cdk bootstrap` wrote to SSM; CDKToolkit's state explains a missing one."""
    fix = f"npx cdk bootstrap aws://{tgt.account}/{tgt.region} (or `cxr deploy --bootstrap`)"
    needed = f"aws-cdk-lib {metadata.version('aws-cdk-lib')} needs {MIN_BOOTSTRAP_VERSION} or later"
    try:
        version = tgt.client("ssm").get_parameter(Name=BOOTSTRAP_PARAMETER)["Parameter"]["Value"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ParameterNotFound":
            return Finding("bootstrap", WARNING, f"cannot read {BOOTSTRAP_PARAMETER}: "
                                                 f"{exc.response['Error'].get('Message', exc)}",
                           "allow ssm:GetParameter on it, or check the bootstrap in the console")
        stack = toolkit_status(tgt)
        if stack is None:
            return Finding("bootstrap", BLOCKER, f"account {tgt.account} is not bootstrapped for CDK in {tgt.region}",
                           fix)
        return Finding("bootstrap", BLOCKER, f"stack {TOOLKIT_STACK} is {stack} but {BOOTSTRAP_PARAMETER} is missing",
                       f"delete {TOOLKIT_STACK} if it failed, then {fix}")
    if not version.isdigit() or int(version) < MIN_BOOTSTRAP_VERSION:
        return Finding("bootstrap", BLOCKER, f"CDK bootstrap version {version} in {tgt.region}; {needed}",
                       f"re-run {fix} with the pinned CLI")
    return Finding("bootstrap", OK, f"CDK bootstrap version {version} in {tgt.region} ({needed})")


def toolkit_status(tgt: target.Target) -> str | None:
    try:
        [stack] = tgt.client("cloudformation").describe_stacks(StackName=TOOLKIT_STACK)["Stacks"]
    except ClientError as exc:
        if "does not exist" in exc.response["Error"].get("Message", ""):
            return None
        raise
    return stack["StackStatus"]


def quota_findings(config: Config, source: quotas.QuotaSource, region: str) -> list[Finding]:
    """One finding per quota the configuration uses: 0 (or below the minimum) blocks, below the recommendation warns."""
    wanted = quotas.needs(config)
    try:
        found = source.lookup([need.name for need in wanted])
    except ClientError as exc:
        return [Finding("quota", WARNING, f"cannot read Service Quotas: {exc.response['Error'].get('Message', exc)}",
                        "allow servicequotas:ListServiceQuotas and ListAWSDefaultServiceQuotas, or pass --quotas "
                        "FILE with a listing saved by someone who may")]
    findings = []
    for need in wanted:
        quota = found.get(need.name)
        if quota is None:
            findings.append(Finding("quota", WARNING, f"no quota named {need.name!r} in {region}: SageMaker may not "
                                                      "offer this instance type here", "check the name in the "
                                                      "Service Quotas console, or configure another instance type"))
            continue
        value = int(quota["Value"])
        about = f"{need.name!r} is {value} ({quota['QuotaCode']}); {need.why}"
        if value >= need.recommended:
            findings.append(Finding("quota", OK, about))
            continue
        fix = request_command(quota["QuotaCode"], need.recommended, region)
        if not quota.get("Adjustable", True):
            fix = "the quota is not adjustable: configure another instance type with -c"
        if value < need.minimum:
            findings.append(Finding("quota", BLOCKER, about, fix))
        else:
            findings.append(Finding("quota", WARNING, f"{about}; {need.recommended} needed for {need.later}", fix))
    return findings


def retained_findings(tgt: target.Target) -> list[Finding]:
    """What an earlier teardown kept: `cxr deploy` re-adopts it (a warning), unless something stops that (a blocker)."""
    where = f"stage {tgt.stage} in {tgt.region}"
    try:
        retained = deployment.retained_resources(tgt)
    except UserError as exc:  # a bucket with the stage's name that these credentials cannot read
        return [Finding("retained", BLOCKER, str(exc), "pass the --stage, --region and --profile of your deployment")]
    if not retained:
        return [Finding("retained", OK, f"nothing of {where} is left from an earlier teardown")]
    findings = [Finding("retained", BLOCKER, f"{item.kind} {item.name}, kept by an earlier teardown of {where}, "
                                             "cannot be re-adopted", item.problem) if item.problem else
                Finding("retained", WARNING, f"{item.kind} {item.name} was kept by an earlier teardown of {where}: "
                                             "`cxr deploy` re-adopts it, and the data it holds or encrypts is "
                                             "readable again") for item in retained]
    try:
        deployment.adopt_overrides(retained)
    except UserError as exc:
        if not any(item.problem for item in retained):  # a problem across them, such as two keys
            findings.append(Finding("retained", BLOCKER, str(exc)))
    return findings


def image_findings(today: datetime.date) -> list[Finding]:
    """A pinned container image AWS no longer patches still deploys: a warning, with what to move to."""
    expired = images.past_end_of_patch(today)
    if not expired:
        return [Finding("images", OK, f"every pinned container image is patched on {today.isoformat()}")]
    return [Finding("images", WARNING, line) for line in expired]


def request_command(code: str, value: int, region: str) -> str:
    return (f"aws service-quotas request-service-quota-increase --service-code {quotas.SERVICE_CODE} "
            f"--quota-code {code} --desired-value {value} --region {region}")


def report(findings: list[Finding], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([asdict(f) for f in findings], indent=1))
        return
    for finding in findings:
        print(finding.line())
    blockers = sum(f.level == BLOCKER for f in findings)
    warnings = sum(f.level == WARNING for f in findings)
    if blockers:
        print(f"{blockers} blocker(s), {warnings} warning(s): fix the blockers before `cxr deploy` / `cxr train`")
    else:
        print(f"no blockers, {warnings} warning(s): ready for `cxr deploy`")
