"""`cxr deploy`: the pinned CDK CLI with the project's configuration, checked before anything runs.

The configuration (cdk.json, -c overrides, --stage) is validated, the CDK CLI's presence,
the credentials and the region are checked, and so is the CDK bootstrap of the account and region
(--bootstrap does it), each failing in one line; buckets and their KMS key retained by an earlier
`cxr teardown` are found and adopted (named, not created again); then `cdk deploy --all` runs.
"""

from __future__ import annotations

import shlex

from botocore.exceptions import ClientError

from cxr import deployment, target
from cxr.commands import reviewers
from cxr.errors import UsageError, UserError
from infra import wiring

BOOTSTRAP_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
"""Written by `cdk bootstrap` with the default qualifier; `cdk deploy` needs it."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="deploy every stack to an AWS account with the pinned CDK CLI",
        description=__doc__.split("\n\n")[1],
    )
    target.add_arguments(parser)
    deployment.add_context_argument(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the CDK command and the configuration; run nothing")
    mode.add_argument("--synth-only", action="store_true",
                      help="run `cdk synth` (templates into cdk.out/, cdk-nag checks); needs no AWS account")
    parser.add_argument("--bootstrap", action="store_true",
                        help="run `cdk bootstrap` for the account and region first, if it was never done")
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.local:
        raise UsageError("deploy targets an AWS account; the offline cloud is started with `cxr local up`")
    overrides = deployment.stage_overrides(args)
    config = deployment.project_config(overrides)
    if args.dry_run:
        command = deployment.deploy_command(overrides, args.profile)
        prefix = f"AWS_REGION={shlex.quote(args.region)} " if args.region else ""
        print(prefix + shlex.join(command))
        stacks = ", ".join(wiring.stack_name(config.stage, part) for part in wiring.STACK_PARTS)
        print(f"stage {config.stage}: stacks {stacks}")
        print(f"endpoint {config.endpoint_mode}, training {config.training_instance_type}"
              f"{' (spot)' if config.training_spot else ''}")
        return 0
    args.stage = overrides.get("stage")
    deployment.require_cdk_cli()
    if args.synth_only:
        status = deployment.run_cdk(deployment.synth_command(overrides, args.profile), args.region)
        if status:
            raise UserError(f"cdk synth failed with exit status {status}: its output above says why")
        print(f"synthesized stage {config.stage} into cdk.out/")
        return 0
    tgt = target.resolve(args)
    if not bootstrapped(tgt):
        if not args.bootstrap:
            raise UserError(f"account {tgt.account} is not bootstrapped for CDK in {tgt.region}: "
                            "run `cxr deploy --bootstrap` (once per account and region)")
        status = deployment.run_cdk(deployment.bootstrap_command(tgt.account, tgt.region, args.profile), tgt.region)
        if status:
            raise UserError(f"cdk bootstrap failed with exit status {status}: its output above says why")
    overrides["stage"] = tgt.stage
    retained = deployment.retained_resources(tgt)
    overrides |= deployment.adopt_overrides(retained)
    config = deployment.project_config(overrides)
    for item in retained:
        print(f"re-adopting the {item.kind} {item.name}, retained by an earlier teardown")
    for name in deployment.enable_object_lock(tgt, retained, config):
        print(f"enabled S3 Object Lock on {name} (no default retention; it cannot be turned off): prediction JSON is "
              f"locked for {config.retention_days} days")
    status = deployment.run_cdk(deployment.deploy_command(overrides, args.profile), tgt.region)
    if status:
        raise UserError(f"cdk deploy failed with exit status {status}: its output above says why "
                        f"(`cxr teardown --stage {tgt.stage}` removes a partial deployment)")
    print(f"deployed stage {tgt.stage} to account {tgt.account}, {tgt.region}")
    if retained:
        print("re-adopted from an earlier teardown (data readable again): "
              + ", ".join(f"{item.kind} {item.name}" for item in retained))
    print(f"data bucket:      {tgt.bucket(wiring.DATA)}")
    print(f"inference bucket: {tgt.bucket(wiring.INFERENCE)}")
    print(f"review page:      {reviewers.page_url(tgt) or 'see the Review stack output PageUrl'}"
          " (invite radiologists with `cxr reviewers add EMAIL`)")
    print("next: cxr upload-dataset DIR, then cxr train")
    return 0


def bootstrapped(tgt: target.Target) -> bool:
    try:
        tgt.client("ssm").get_parameter(Name=BOOTSTRAP_PARAMETER)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
            return False
        raise
    return True
