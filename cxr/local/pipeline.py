"""The training state machine the CDK app synthesizes, made runnable on the offline cloud.

:func:`synthesize` runs the real CDK app (with the local configuration), :func:`definition` takes
the state machine's ASL out of the templates and resolves every reference to a local resource,
and :func:`localize_training_task` is the one rewrite the local mode makes to it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from cxr.local.references import LocalValues
from infra import asl, wiring
from infra.config import Config

PSEUDO = {"AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}


@dataclass(frozen=True)
class Synthesized:
    templates: list[dict]
    outdir: Path


def synthesize(config: Config, outdir: Path) -> Synthesized:
    """The CDK app's templates for ``config`` (cdk-nag runs too: an unacknowledged finding raises)."""
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")  # node 20 works for this CDK
    from infra.app import build, make_app

    context = {"cxr": {"stage": config.stage, "profile": config.profile}}
    app = make_app(outdir=str(outdir), context=context)
    build(app, config)
    assembly = app.synth()
    return Synthesized(templates=[stack.template for stack in assembly.stacks], outdir=Path(outdir))


def publish_file_assets(synthesized: Synthesized, account: str, region: str) -> list[str]:
    """Upload file assets where the templates expect them (CDK's bootstrap bucket), as ``cdk deploy`` would."""
    s3 = boto3.client("s3", region_name=region)
    published = []
    for manifest_path in sorted(synthesized.outdir.glob("*.assets.json")):
        manifest = json.loads(manifest_path.read_text())
        for asset in manifest.get("files", {}).values():
            if asset["source"].get("packaging") != "file" or asset["source"]["path"].endswith(".template.json"):
                continue
            for destination in asset["destinations"].values():
                bucket = _substitute(destination["bucketName"], account, region)
                if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
                    s3.create_bucket(Bucket=bucket)
                s3.upload_file(str(synthesized.outdir / asset["source"]["path"]), bucket, destination["objectKey"])
                published.append(f"s3://{bucket}/{destination['objectKey']}")
    return published


def definition(synthesized: Synthesized, values: dict[str, Any], training_task_arn: str) -> str:
    """The state machine's ASL with local references, and its training task in local form."""
    text = asl.definition(synthesized.templates, values, wiring.STATE_MACHINE_ID)
    return json.dumps(localize_training_task(json.loads(text), training_task_arn))


def reference_values(synthesized: Synthesized, names, account: str, region: str, kms_key_arn: str) -> dict[str, Any]:
    """Each reference of the definition mapped to the local resource with the same role."""
    expression = asl.definition_expression(synthesized.templates, wiring.STATE_MACHINE_ID)
    local = LocalValues(synthesized.templates, names, kms_key_arn)
    values: dict[str, Any] = {"AWS::Region": region, "AWS::AccountId": account, **PSEUDO}
    for reference in asl.references(synthesized.templates, expression):
        if reference.logical_id is not None:
            values[reference.name] = local[reference.name]
    return values


def localize_training_task(state_machine: dict, function_arn: str) -> dict:
    """The one ASL rewrite of the local mode: ``createTrainingJob.sync`` becomes a Lambda task.

    moto's engine refuses SageMaker integrations. The replacement task invokes ``function_arn``
    (:mod:`cxr.local.training_task`) with the state's own ``Parameters`` and returns what
    ``.sync`` returns (DescribeTrainingJob), so ResultSelector, Retry and Catch stay as they are.
    """
    rewritten = 0

    def visit(states: dict) -> None:
        nonlocal rewritten
        for state in states.values():
            if state.get("Type") == "Task" and state.get("Resource") == wiring.TRAINING_INTEGRATION:
                state["Resource"] = function_arn
                rewritten += 1
            for branch in state.get("Branches", []):
                visit(branch["States"])
            if "Iterator" in state:
                visit(state["Iterator"]["States"])
            if "ItemProcessor" in state:
                visit(state["ItemProcessor"]["States"])

    visit(state_machine["States"])
    if rewritten != 1:
        raise ValueError(f"expected exactly one {wiring.TRAINING_INTEGRATION} task, found {rewritten}")
    return state_machine


def _substitute(text: str, account: str, region: str) -> str:
    return text.replace("${AWS::AccountId}", account).replace("${AWS::Region}", region).replace(
        "${AWS::Partition}", "aws")
