"""Which deployment a command talks to: an AWS account (credentials, region, stage) or the offline cloud.

Every `cxr` command that touches a deployment takes ``--local`` / ``--stage`` / ``--region`` /
``--profile`` through :func:`add_arguments` and gets a :class:`Target`; the command code is the same
for both, only the clients' endpoint differs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError, PartialCredentialsError

from cxr.errors import UserError
from cxr.local import names as local_names
from cxr.local.names import LocalNames
from infra import wiring

ROOT = Path(__file__).resolve().parent.parent
LOCAL_DIR = Path(os.environ.get("CXR_LOCAL_DIR", ROOT / ".cxr-local"))
"""The offline cloud's folder (state file, log, training jobs, models); tests point it elsewhere."""
LOCAL_STATE = LOCAL_DIR / "server.json"
"""Written by `cxr local up`: the offline cloud's URL, process id and stage."""


def default_stage() -> str:
    """The stage cdk.json deploys (``context.cxr.stage``)."""
    context = json.loads((ROOT / "cdk.json").read_text()).get("context", {})
    return context.get("cxr", {}).get("stage", "dev")


def add_arguments(parser) -> None:
    group = parser.add_argument_group("deployment")
    group.add_argument("--local", action="store_true", help="talk to the offline cloud started by `cxr local up`")
    group.add_argument("--stage", default=None, help="stage name (default: cdk.json's, or the offline cloud's)")
    group.add_argument("--region", default=None, help="AWS region (default: the profile's)")
    group.add_argument("--profile", default=None, help="AWS named profile")


@dataclass
class Target:
    session: boto3.Session
    stage: str
    account: str
    region: str
    endpoint_url: str | None = None
    """The offline cloud's URL; None for AWS."""

    @property
    def is_local(self) -> bool:
        return self.endpoint_url is not None

    def client(self, service: str, config: Config | None = None):
        return self.session.client(service, region_name=self.region, endpoint_url=self.endpoint_url, config=config)

    def bucket(self, role: str) -> str:
        return wiring.BUCKETS[role].name(self.stage, self.account, self.region)

    @property
    def endpoint_name(self) -> str:
        return wiring.endpoint_name(self.stage)

    def state_machine_arn(self) -> str:
        """The training pipeline's ARN: from CloudFormation on AWS, by its local name on the offline cloud."""
        if self.is_local:
            name = LocalNames(self.stage).state_machine
            machines = self.client("stepfunctions").list_state_machines()["stateMachines"]
            for machine in machines:
                if machine["name"] == name:
                    return machine["stateMachineArn"]
            raise UserError(f"the offline cloud has no state machine {name}: restart it with `cxr local up`")
        return self.stack_resource("TrainingPipeline", "AWS::StepFunctions::StateMachine")

    def function_name(self, spec: wiring.Function, part: str) -> str:
        """A function's name: by its local name on the offline cloud, from CloudFormation (stack ``part``) on AWS."""
        if self.is_local:
            return LocalNames(self.stage).function(spec)
        return self.stack_resource(part, "AWS::Lambda::Function", logical_prefix=spec.id)

    def stack_resource(self, part: str, resource_type: str, logical_prefix: str = "") -> str:
        """The physical id of a deployed stack's resource of this type (whose logical id starts so)."""
        stack = wiring.stack_name(self.stage, part)
        try:
            paginator = self.client("cloudformation").get_paginator("list_stack_resources")
            for page in paginator.paginate(StackName=stack):
                for resource in page["StackResourceSummaries"]:
                    if (resource["ResourceType"] == resource_type
                            and resource["LogicalResourceId"].startswith(logical_prefix)):
                        return resource["PhysicalResourceId"]
        except ClientError as exc:
            if "does not exist" in str(exc):
                raise UserError(f"stack {stack} is not deployed in {self.region} (account {self.account}): "
                                "run `cxr deploy`, or pass the right --region / --stage") from None
            raise
        raise UserError(f"stack {stack} has no {resource_type}: redeploy with `cxr deploy`")


def resolve(args) -> Target:
    """The target the command-line arguments name, checked enough to fail early with one clear line."""
    if getattr(args, "local", False):
        return local_target(args.stage)
    session = boto3.Session(profile_name=args.profile, region_name=args.region)
    region = session.region_name
    if not region:
        raise UserError("no AWS region configured: pass --region, set AWS_REGION, or run `aws configure`")
    try:
        account = session.client("sts", region_name=region).get_caller_identity()["Account"]
    except (NoCredentialsError, PartialCredentialsError):
        raise UserError("no AWS credentials found: run `aws configure` (or set AWS_PROFILE), "
                        "or add --local to use the offline cloud") from None
    except NoRegionError:
        raise UserError("no AWS region configured: pass --region or set AWS_REGION") from None
    except ClientError as exc:
        raise UserError(f"AWS refused the credentials: {exc.response['Error'].get('Message', exc)}") from None
    return Target(session=session, stage=args.stage or default_stage(), account=account, region=region)


def local_target(stage: str | None = None) -> Target:
    if not LOCAL_STATE.exists():
        raise UserError("the offline cloud is not running: start it with `cxr local up`")
    state = json.loads(LOCAL_STATE.read_text())
    if stage and stage != state["stage"]:
        raise UserError(f"the offline cloud runs stage {state['stage']!r}, not {stage!r}")
    session = boto3.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name=local_names.REGION)
    return Target(session=session, stage=state["stage"], account=local_names.ACCOUNT, region=local_names.REGION,
                  endpoint_url=state["url"])
