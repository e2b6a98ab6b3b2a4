"""What the stacks promise for DICOM: the retained pseudonym key, and who may read the SRs that carry identity."""

from __future__ import annotations

import json

from infra import wiring
from lambdas.domain import layout


def policy_statements(synth, type_: str) -> dict[str, list[dict]]:
    return {lid: r["Properties"]["PolicyDocument"]["Statement"] for lid, r in synth.resources(type_).items()}


def test_the_pseudonym_key_is_a_retained_never_rotated_secret_under_the_stage_key(synth):
    (secret,) = synth.resources("AWS::SecretsManager::Secret", "storage").values()
    assert secret["DeletionPolicy"] == secret["UpdateReplacePolicy"] == "Retain"
    assert secret["Properties"]["Name"] == wiring.PSEUDONYM_SECRET_NAME.format(stage="dev")
    assert secret["Properties"]["KmsKeyId"] and secret["Properties"]["GenerateSecretString"]["PasswordLength"] >= 32
    assert not synth.resources("AWS::SecretsManager::RotationSchedule")


def test_only_the_functions_that_name_uploads_read_the_pseudonym_key(synth):
    """Preprocess (DICOM pseudonyms, raw/ names), predict (incoming/ names) and the re-score's start (the names its
    copies of incoming/ uploads take), nothing else."""
    readers = sorted(lid for lid, statements in policy_statements(synth, "AWS::IAM::Policy").items()
                     for s in statements if "secretsmanager:GetSecretValue" in json.dumps(s["Action"]))
    assert [r.split("Role")[0] for r in readers] == [wiring.PREDICT.id, wiring.PREPROCESS.id, wiring.START_RESCORE.id]
    for stack in ("ingest", "inference"):
        (function,) = [f for f in synth.resources("AWS::Lambda::Function", stack).values()
                       if "PSEUDONYM_SECRET_ARN" in json.dumps(f)]
        assert function["Properties"]["Environment"]["Variables"][wiring.ENV_PSEUDONYM_SECRET] == \
            wiring.PSEUDONYM_SECRET_NAME.format(stage="dev")


def test_results_dicom_is_read_only_through_its_own_policy(synth):
    """No role of the stacks reads the SRs; the predict function only writes (and retires) them."""
    prefix = f"/{layout.RESULTS_DICOM}*"
    for lid, statements in policy_statements(synth, "AWS::IAM::Policy").items():
        for statement in statements:
            if prefix in json.dumps(statement["Resource"]):
                assert set(json.dumps(statement["Action"]).strip('[]"').split('", "')) <= {
                    "s3:PutObject", "s3:DeleteObject"}, lid
    (reader,) = [statements for lid, statements in policy_statements(synth, "AWS::IAM::ManagedPolicy").items()
                 if lid.startswith("ResultsDicomReader")]
    reads = [s for s in reader if "s3:GetObject" in s["Action"]]
    assert len(reads) == 1 and prefix in json.dumps(reads[0]["Resource"])
    (decrypt,) = [s for s in reader if s["Action"] == "kms:Decrypt"]
    assert "kms:ViaService" in decrypt["Condition"]["StringEquals"]
