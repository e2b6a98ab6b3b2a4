"""The project's configuration and the pinned CDK CLI, as `cxr deploy`, `cxr teardown` and `cxr cost` use them.

The configuration is cdk.json's ``context.cxr`` with ``-c KEY=VALUE`` overrides on top, read by
the same :class:`infra.config.Config` the CDK app reads; overrides reach the app as top-level CDK
context keys (``-c endpoint_mode=async``), which ``Config.from_context`` applies over cdk.json's
object. Every command is validated here first, so a bad value fails in one line before CDK starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cxr.arguments import key_values
from cxr.errors import UserError
from infra.config import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent
CDK_BIN = ROOT / "node_modules" / ".bin" / "cdk"
"""Installed by `make setup` (``npm ci``) at the version package-lock.json pins."""


def add_context_argument(parser) -> None:
    parser.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE",
                        help="override a cdk.json setting, e.g. -c endpoint_mode=realtime (repeatable)")


def parse_context(pairs: list[str]) -> dict[str, str]:
    return key_values(pairs, "-c")


def cdk_context(root: Path = ROOT) -> dict:
    try:
        return json.loads((root / "cdk.json").read_text()).get("context", {})
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read cdk.json: {exc}") from None


def project_config(overrides: dict[str, str], root: Path = ROOT) -> Config:
    """The configuration the CDK app would build with these overrides."""
    context = cdk_context(root) | overrides
    try:
        return Config.from_context(context.get)
    except ConfigError as exc:
        raise UserError(f"configuration (cdk.json and -c): {exc}") from None


def cdk_command(action: list[str], overrides: dict[str, str], profile: str | None = None) -> list[str]:
    """``npx --no -- cdk <action> ... -c KEY=VALUE``: the pinned CLI only (``--no``: never download another)."""
    command = ["npx", "--no", "--", "cdk", *action]
    for key, value in overrides.items():
        command += ["-c", f"{key}={value}"]
    if profile:
        command += ["--profile", profile]
    return command


def deploy_command(overrides: dict[str, str], profile: str | None = None) -> list[str]:
    return cdk_command(["deploy", "--all", "--require-approval", "never"], overrides, profile)


def synth_command(overrides: dict[str, str], profile: str | None = None) -> list[str]:
    return cdk_command(["synth", "--quiet"], overrides, profile)


def destroy_command(overrides: dict[str, str], profile: str | None = None) -> list[str]:
    return cdk_command(["destroy", "--all", "--force"], overrides, profile)


def bootstrap_command(account: str, region: str, profile: str | None = None) -> list[str]:
    return cdk_command(["bootstrap", f"aws://{account}/{region}"], {}, profile)


def require_cdk_cli() -> None:
    """One line naming the fix when Node.js or the pinned CDK CLI is missing."""
    if shutil.which("npx") is None:
        raise UserError("Node.js is not installed (no `npx` on PATH): install Node.js 20, then run `make setup`")
    if not CDK_BIN.exists():
        raise UserError("the CDK CLI is not installed: run `make setup` (it installs the pinned aws-cdk into "
                        "node_modules/)")


def run_cdk(command: list[str], region: str | None) -> int:
    """Run the CLI from the project root with the region the target resolved; its output goes to the terminal."""
    env = dict(os.environ)
    if region:
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = region
    env.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def stage_overrides(args) -> dict[str, str]:
    """``-c`` pairs plus ``--stage`` (which wins: it also names the stacks the command looks for)."""
    overrides = parse_context(args.context)
    if args.stage:
        overrides["stage"] = args.stage
    return overrides
