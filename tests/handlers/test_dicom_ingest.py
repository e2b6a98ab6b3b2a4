"""DICOM through the preprocess Lambda: de-identified sidecars, reasons, and no identifier outside raw/."""

from __future__ import annotations

import functools
import io
import json

import boto3
import pytest
from PIL import Image

import dicom_corpus
from cxr.local import s3_events
from infra import wiring
from ingested import PSEUDONYM_SECRET, name_of, quarantine_key
from lambdas import preprocess
from lambdas.domain import deid

BUCKET, DATASET = "cxr-data", "dicom-ds"
SECRET = PSEUDONYM_SECRET


@functools.cache
def corpus() -> list[dicom_corpus.Case]:
    return dicom_corpus.corpus()


@pytest.fixture
def ingested(data_bucket, state_table, lambda_context, monkeypatch, capsys):
    """Every corpus file uploaded under raw/ and ingested; returns the keys and what the handler logged."""
    s3, records = boto3.client("s3"), []
    for case in corpus():
        key = key_of(case)
        s3.put_object(Bucket=BUCKET, Key=key, Body=case.data)
        records.append(s3_events.record_for_object(s3, BUCKET, key))
    outcome = preprocess.handler(s3_events.event(*records), lambda_context)
    accepted = sum(case.reason is None for case in corpus())
    assert outcome["accepted"] == accepted and outcome["rejected"] == len(corpus()) - accepted
    return capsys.readouterr()


def read(key: str) -> bytes:
    return boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()


def key_of(case: dicom_corpus.Case) -> str:
    return f"raw/{DATASET}/train/NORMAL/{case.name}"


def sidecars() -> dict[str, dict]:
    """Source file name -> its processed sidecar (which names its source by the key's opaque name)."""
    listing = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="processed/")["Contents"]
    documents = [json.loads(read(o["Key"])) for o in listing if o["Key"].endswith(".json")]
    files = {name_of(key_of(case), BUCKET): case.name for case in corpus()}
    return {files[d["source"]["name"]]: d for d in documents}


def test_accepted_files_keep_only_de_identified_facts(ingested):
    documents = sidecars()
    assert sorted(documents) == sorted(c.name for c in corpus() if c.reason is None)
    key = SECRET.encode()
    pseudonym = deid.pseudonymous_patient_id(key, dicom_corpus.PATIENT_ID)
    for name, document in documents.items():
        facts = document["dicom"]
        assert document["patient_id"] == facts["patient_id"] == pseudonym, name  # grouped by the pseudonym
        assert facts["study_uid"] == deid.pseudonymous_uid(key, dicom_corpus.STUDY_UID)
        assert facts["study_uid"].startswith("2.25.") and len(facts["study_uid"]) <= 64
        assert facts["modality"] == "DX" and facts["sex"] == "F" and facts["pixel_spacing_mm"] == [0.139, 0.139]
        assert document["original"]["format"] == "DICOM"
        expected_view = "unknown" if "empty-body-part" in name else "PA"
        assert (facts["view_position"], facts["body_part"]) == (expected_view, expected_view.replace("PA", "CHEST"))
        assert facts["age_years"] == ("90+" if "age-93" in name else 45)
    instance_uids = [d["dicom"]["instance_uid"] for d in documents.values()]
    assert len(set(instance_uids)) == len(instance_uids)


def test_rejected_files_are_quarantined_with_their_reason(ingested):
    for case in corpus():
        if case.reason is not None:
            document = json.loads(read(quarantine_key(key_of(case), BUCKET)))
            assert document["reason"] == case.reason, case.name


def test_no_identifier_is_written_outside_raw(ingested):
    """Every object version outside raw/ (keys, metadata, bodies, PNG text), every state record, every log line.

    The file names carry identifiers too (``dicom_corpus.FILE_NAME_IDENTIFIER``, the fake PatientID):
    nothing is taken out of what is searched.
    """
    s3 = boto3.client("s3")
    written = []
    for version in s3.list_object_versions(Bucket=BUCKET).get("Versions", []):
        if version["Key"].startswith("raw/"):
            continue
        head = s3.head_object(Bucket=BUCKET, Key=version["Key"], VersionId=version["VersionId"])
        body = read(version["Key"])
        written += [version["Key"], json.dumps(head.get("Metadata", {})), body.decode("latin-1")]
        if version["Key"].endswith(".png"):
            image = Image.open(io.BytesIO(body))
            written.append(json.dumps({k: str(v) for k, v in {**image.info, **getattr(image, "text", {})}.items()}))
    written += [json.dumps(item) for item in boto3.client("dynamodb").scan(TableName="cxr-source-state")["Items"]]
    written += [ingested.out, ingested.err]
    text = "\n".join(written)
    assert "dicom" in text and "claim:" in text  # the search saw the records and the identical-pixel claims
    leaked = [identifier for identifier in dicom_corpus.IDENTIFIERS if identifier in text]
    assert not leaked, leaked


def test_dicom_without_the_secret_fails_loudly(data_bucket, state_table, lambda_context, monkeypatch):
    monkeypatch.delenv(wiring.ENV_PSEUDONYM_SECRET, raising=False)
    case = next(c for c in corpus() if c.reason is None)
    s3 = boto3.client("s3")
    key = f"raw/{DATASET}/NORMAL/{case.name}"
    s3.put_object(Bucket=BUCKET, Key=key, Body=case.data)
    with pytest.raises(RuntimeError, match="PSEUDONYM_SECRET"):
        preprocess.handler(s3_events.event(s3_events.record_for_object(s3, BUCKET, key)), lambda_context)


def test_a_dicom_keys_duplicate_overwrite_and_delete_retire_its_own_outputs(data_bucket, state_table, lambda_context):
    """An identifier-named DICOM key: delivered twice, then overwritten by a lateral view, then deleted. Its
    outputs follow its current version under its name, and no output key or body names the file."""
    accepted = next(c for c in corpus() if c.reason is None)
    lateral = next(c for c in corpus() if c.reason == "dicom_lateral")
    s3, key = boto3.client("s3"), f"raw/{DATASET}/NORMAL/{dicom_corpus.FILE_NAME_IDENTIFIER}_MRN5550001.dcm"

    def outputs() -> list[str]:
        listing = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
        return sorted(o["Key"] for o in listing if not o["Key"].startswith("raw/"))

    s3.put_object(Bucket=BUCKET, Key=key, Body=accepted.data)
    event = s3_events.event(s3_events.record_for_object(s3, BUCKET, key))
    assert preprocess.handler(event, lambda_context)["accepted"] == 1
    processed = outputs()
    assert preprocess.handler(event, lambda_context)["duplicate"] == 1 and outputs() == processed  # redelivered
    s3.put_object(Bucket=BUCKET, Key=key, Body=lateral.data)
    assert preprocess.handler(s3_events.event(s3_events.record_for_object(s3, BUCKET, key)),
                              lambda_context)["rejected"] == 1
    assert outputs() == [quarantine_key(key, BUCKET)]  # the image and sidecar retired, the reason current
    assert json.loads(read(quarantine_key(key, BUCKET)))["reason"] == "dicom_lateral"
    marker = s3.delete_object(Bucket=BUCKET, Key=key)["VersionId"]
    removed = s3_events.object_created_record(BUCKET, key, 0, version_id=marker,
                                              event_name="ObjectRemoved:DeleteMarkerCreated")
    assert preprocess.handler(s3_events.event(removed), lambda_context)["removed"] == 1
    assert outputs() == []
    written = [v["Key"] for v in s3.list_object_versions(Bucket=BUCKET)["Versions"] if not v["Key"].startswith("raw/")]
    assert len(written) == 3 and not [w for w in written if "Zelda" in w or "MRN" in w]  # every version named
