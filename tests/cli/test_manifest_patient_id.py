"""The CSV manifest's optional patient_id column: carried as metadata, pseudonymised by ingest, grouped by in splits."""

from __future__ import annotations

import boto3
import pytest
from test_upload_manifest import SOURCE, args, deployment  # noqa: F401

import corpus
from cxr import manifest
from cxr.commands import upload_dataset
from cxr.errors import UserError
from lambdas.domain import deid, layout


def test_a_fourth_column_names_the_patient_and_a_header_may_name_it(tmp_path):
    (tmp_path / "a.png").write_bytes(corpus.png())
    csv = tmp_path / "m.csv"
    csv.write_text("set,uri,label,patient_id\nTRAIN,a.png,NORMAL,MRN-0042\nTRAIN,a.png,NORMAL,MRN-0042\n")
    [entry] = manifest.read(csv)
    assert (entry.split, entry.label, entry.patient_id) == ("train", "NORMAL", "MRN-0042")
    csv.write_text("TRAIN,a.png,NORMAL,MRN-0042\nTRAIN,a.png,NORMAL,MRN-0043\n")
    with pytest.raises(UserError, match="another set or label or patient id"):
        manifest.read(csv)
    csv.write_text("a.png,NORMAL\n")
    assert manifest.read(csv)[0].patient_id is None


def test_a_bad_patient_id_is_named(tmp_path):
    (tmp_path / "a.png").write_bytes(corpus.png())
    csv = tmp_path / "m.csv"
    csv.write_text(f"TRAIN,a.png,NORMAL,{'x' * 65}\n")
    with pytest.raises(UserError, match="patient_id must be printable ASCII"):
        manifest.read(csv)


def test_uploads_and_copies_carry_the_patient_id_as_metadata(deployment, tmp_path):  # noqa: F811
    (tmp_path / "a.png").write_bytes(corpus.png())
    (tmp_path / "c.png").write_bytes(corpus.png(seed=2))
    boto3.client("s3").put_object(Bucket=SOURCE, Key="x/b.png", Body=corpus.png(seed=1))
    csv = tmp_path / "m.csv"
    csv.write_text(f"TRAIN,a.png,NORMAL,MRN-1\nTEST,s3://{SOURCE}/x/b.png,PNEUMONIA,MRN-2\n,c.png,VIRAL\n")
    assert upload_dataset.run(args(csv)) == 0
    s3, bucket = boto3.client("s3"), deployment.bucket("data")
    metadata = {key: s3.head_object(Bucket=bucket, Key=key)["Metadata"].get(layout.PATIENT_METADATA)
                for key in ("raw/m/train/NORMAL/a.png", "raw/m/test/PNEUMONIA/b.png", "raw/m/VIRAL/c.png")}
    assert metadata == {"raw/m/train/NORMAL/a.png": "MRN-1", "raw/m/test/PNEUMONIA/b.png": "MRN-2",
                        "raw/m/VIRAL/c.png": None}


def test_ingest_records_the_pseudonym_of_a_declared_patient(data_bucket, state_table, lambda_context, monkeypatch):
    from cxr.local import s3_events
    from infra import wiring
    from lambdas import preprocess

    arn = boto3.client("secretsmanager").create_secret(Name="k", SecretString="s" * 40)["ARN"]
    monkeypatch.setenv(wiring.ENV_PSEUDONYM_SECRET, arn)
    s3 = boto3.client("s3")
    key = "raw/ds/NORMAL/IM-0001-0001.png"  # its name alone would give patient 0001
    s3.put_object(Bucket=data_bucket, Key=key, Body=corpus.png(), Metadata={layout.PATIENT_METADATA: "MRN-7"})
    assert preprocess.handler(s3_events.event(s3_events.record_for_object(s3, data_bucket, key)),
                              lambda_context)["accepted"] == 1
    [listing] = [o["Key"] for o in s3.list_objects_v2(Bucket=data_bucket, Prefix="processed/")["Contents"]
                 if o["Key"].endswith(".json")]
    sidecar = s3.get_object(Bucket=data_bucket, Key=listing)["Body"].read().decode()
    assert deid.pseudonymous_patient_id(b"s" * 40, "MRN-7") in sidecar and "MRN-7" not in sidecar
