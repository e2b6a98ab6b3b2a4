"""The audit trail in the synthesized app: Object Lock on the predictions' bucket, the digest through the pipeline."""

from __future__ import annotations

import json

from infra import wiring
from infra.version import code_version


def buckets(synth) -> dict:
    return {json.dumps(r["Properties"]["BucketName"]): r["Properties"]
            for r in synth.resources("AWS::S3::Bucket", "storage").values()}


def test_only_the_inference_bucket_has_object_lock_and_none_has_a_default_retention(synth):
    locked = {name for name, props in buckets(synth).items() if props.get("ObjectLockEnabled")}
    assert len(locked) == 1 and f"-{wiring.INFERENCE}-" in next(iter(locked))
    for props in buckets(synth).values():
        # a bucket-wide default would lock incoming/ and rejected/ too
        assert "Rule" not in props.get("ObjectLockConfiguration", {})
        if props.get("ObjectLockEnabled"):
            assert props["VersioningConfiguration"] == {"Status": "Enabled"}


def test_the_deploy_step_receives_the_evaluate_steps_digest(synth):
    [machine] = synth.resources("AWS::StepFunctions::StateMachine", "pipeline").values()
    definition = json.dumps(machine["Properties"]["DefinitionString"])
    assert '\\"artifact_sha256.$\\":\\"$.evaluation.artifact_sha256\\"' in definition


def test_functions_that_record_carry_the_code_version(synth):
    variables = {r["Properties"]["Handler"]: r["Properties"].get("Environment", {}).get("Variables", {})
                 for r in synth.resources("AWS::Lambda::Function").values() if "Handler" in r["Properties"]}
    for spec in (wiring.PREDICT, wiring.COMPLETE_PREDICTION, wiring.EVALUATE_MODEL, wiring.DEPLOY_MODEL):
        assert variables[spec.handler][wiring.ENV_CODE_VERSION] == code_version()
