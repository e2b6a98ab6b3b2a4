"""`cxr teardown`: remove a stage and prove nothing billable is left.

CloudFormation removes what the stacks own (`cdk destroy --all --force`); the pipeline's
endpoint, endpoint configurations and models are created by a Lambda, so they are found and
deleted through the SageMaker API first, after running executions and training jobs are
stopped (a running pipeline would deploy again). Data buckets and the predictions table are
retained by the stacks and kept unless `--delete-data`; the next `cxr deploy` adopts the kept
buckets and their KMS key. Exit status 1 when anything that must go is still there afterwards.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cxr import billable, deployment, target
from cxr.billable import Leftover, Outcome
from cxr.errors import UserError

ASYNC_KINDS = (billable.ENDPOINT, billable.TRAINING_JOB)
"""Deleted or stopped asynchronously by SageMaker: waited for before the stacks go and before the verdict."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "teardown",
        help="destroy a stage's stacks and everything the pipeline created, then report what is left",
        description=__doc__.split("\n\n")[1],
    )
    target.add_arguments(parser)
    deployment.add_context_argument(parser)
    parser.add_argument("--delete-data", action="store_true",
                        help="also empty (every version) and delete the buckets, and delete the predictions table")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed; change nothing")
    parser.add_argument("--wait", type=float, default=900, metavar="SECONDS",
                        help="how long to wait for endpoints to delete and training jobs to stop (default 900)")
    parser.set_defaults(run=run)


@dataclass
class Report:
    found: list[Leftover]
    outcomes: list[Outcome] = field(default_factory=list)
    left: list[Leftover] = field(default_factory=list)
    """Still there and not data kept on purpose: what makes the exit status 1."""
    kept: list[Leftover] = field(default_factory=list)
    destroy_status: int | None = None
    """The CDK CLI's exit status; None when it did not run (offline cloud, or nothing was asked)."""

    @property
    def ok(self) -> bool:
        return not self.left and self.destroy_status in (None, 0)


def teardown(tgt: target.Target, *, delete_data: bool, destroy: Callable[[], int] | None, wait_s: float,
             sleep: Callable[[float], None] = time.sleep) -> Report:
    """Stop and delete the pipeline's resources, run ``destroy`` (the stacks), optionally the data, then verify."""
    report = Report(found=billable.find(tgt))
    pipeline_made = [leftover for leftover in report.found if not leftover.is_data]
    report.outcomes += billable.clean(tgt, pipeline_made, delete_data=False)
    billable.wait_until_gone(tgt, ASYNC_KINDS, wait_s, sleep=sleep)
    if destroy is not None:
        report.destroy_status = destroy()
    if delete_data:
        report.outcomes += billable.clean(tgt, [lo for lo in billable.find(tgt) if lo.is_data], delete_data=True)
    billable.wait_until_gone(tgt, ASYNC_KINDS, wait_s, sleep=sleep)
    after = billable.find(tgt)
    report.left = [leftover for leftover in after if not leftover.is_data or delete_data]
    report.kept = [leftover for leftover in after if leftover.is_data and not delete_data]
    return report


def run(args) -> int:
    overrides = deployment.stage_overrides(args)
    deployment.project_config(overrides)
    args.stage = overrides.get("stage")
    if not args.local:
        deployment.require_cdk_cli()
    tgt = target.resolve(args)
    overrides["stage"] = tgt.stage
    command = deployment.destroy_command(overrides, args.profile)
    found = billable.find(tgt)
    if not found and not tgt.is_local:
        raise UserError(f"nothing of stage {tgt.stage} is deployed in {tgt.region} (account {tgt.account}): "
                        "pass the right --region / --stage / --profile")
    if args.dry_run:
        print(f"Would remove from stage {tgt.stage} ({_where(tgt)}):")
        removable = [leftover for leftover in found if not leftover.is_data or args.delete_data]
        for leftover in removable or ["nothing the pipeline created"]:
            print(f"  {leftover}")
        if not args.local:
            print("then: " + shlex.join(command))
        for leftover in found:
            if leftover.is_data and not args.delete_data:
                print(f"keep: {leftover}")
        return 0
    destroy = None if tgt.is_local else (lambda: deployment.run_cdk(command, tgt.region))
    report = teardown(tgt, delete_data=args.delete_data, destroy=destroy, wait_s=args.wait)
    print_report(report, tgt)
    return 0 if report.ok else 1


def _where(tgt: target.Target) -> str:
    return "offline cloud" if tgt.is_local else f"account {tgt.account}, {tgt.region}"


def print_report(report: Report, tgt: target.Target) -> None:
    print(f"\nTeardown of stage {tgt.stage} ({_where(tgt)})")
    print("Removed:" if report.outcomes else "Removed: nothing (the pipeline had created nothing billable)")
    for outcome in report.outcomes:
        print(f"  {outcome.action:<20} {outcome.leftover}")
    if report.destroy_status not in (None, 0):
        print(f"cdk destroy failed with exit status {report.destroy_status}: its output above says why")
    print("Left (still billable):" if report.left else "Left: nothing billable")
    for leftover in report.left:
        print(f"  {leftover}")
    if report.kept:
        print("Kept (retained data, storage is billed; --delete-data removes it):")
        for leftover in report.kept:
            print(f"  {leftover}")
    if not tgt.is_local:
        print("The stacks also retain the stage's KMS key and log groups (see infra/README.md).")
        if report.kept:
            print(f"`cxr deploy --stage {tgt.stage}` adopts the kept buckets and their key again: the data stays "
                  "readable.")
