"""`cxr upload-dataset`: folders and AutoML-style CSV rows become the raw keys ingest reads, resumably (moto).

The buckets are SSE-KMS encrypted and moto's ETags are made AWS's (not the MD5 of the data under
SSE-KMS, :mod:`cxr.local.hooks`), so a resume that compared ETags with digests would send everything again.
"""

from __future__ import annotations

import argparse
import hashlib
import re

import boto3
import pytest

import corpus
from cxr import manifest, target
from cxr.commands import upload_dataset
from cxr.errors import UsageError, UserError
from cxr.local import hooks

SOURCE = "hospital-pacs-export"


@pytest.fixture
def deployment(aws, monkeypatch):
    deployment = target.Target(session=boto3.Session(), stage="dev", account="123456789012", region="us-east-1")
    s3 = boto3.client("s3")
    key = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    for bucket in (deployment.bucket("data"), SOURCE):
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [{
            "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key},
            "BucketKeyEnabled": True}]})
    monkeypatch.setattr(target, "resolve", lambda args: deployment)
    with hooks.aws_etags():
        yield deployment


def args(csv_path, **extra):
    return argparse.Namespace(folder=None, manifest=csv_path, dataset=None, workers=2, dry_run=False, **extra)


def sent(capsys) -> str:
    [line] = [line for line in capsys.readouterr().out.splitlines() if "to send" in line]
    return line.split(": ", 1)[1]


def test_a_folder_upload_resumes_by_checksum_and_resends_a_changed_file(deployment, tmp_path, capsys):
    folder = tmp_path / "wards"
    for label, seed in (("NORMAL", 1), ("NORMAL", 2), ("PNEUMONIA", 3)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"IM-000{seed}-0001.jpeg").write_bytes(corpus.jpeg(seed=seed))
    folder_args = argparse.Namespace(folder=folder, manifest=None, dataset=None, workers=2, dry_run=False)
    assert upload_dataset.run(folder_args) == 0
    assert sent(capsys) == "0 already there with the same checksum, 3 to send"
    assert upload_dataset.run(folder_args) == 0
    assert sent(capsys) == "3 already there with the same checksum, 0 to send"
    s3, key = boto3.client("s3"), "raw/wards/NORMAL/IM-0001-0001.jpeg"
    head = s3.head_object(Bucket=deployment.bucket("data"), Key=key, ChecksumMode="ENABLED")
    assert head["ETag"].strip('"') != hashlib.md5(corpus.jpeg(seed=1)).hexdigest()  # SSE-KMS: not the data's MD5
    assert head["ChecksumSHA256"] == upload_dataset.operations.sha256_base64(corpus.jpeg(seed=1))

    (folder / "NORMAL" / "IM-0001-0001.jpeg").write_bytes(corpus.jpeg(seed=4))  # same name, new content
    assert upload_dataset.run(folder_args) == 0
    assert sent(capsys) == "2 already there with the same checksum, 1 to send"
    body = s3.get_object(Bucket=deployment.bucket("data"), Key=key)["Body"].read()
    assert body == corpus.jpeg(seed=4)


def test_rows_map_to_the_folder_layout_ingest_reads(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for path in (tmp_path / "a" / "person3_virus_7.jpeg", tmp_path / "b" / "person3_virus_7.jpeg"):
        path.write_bytes(corpus.jpeg())
    csv_path = tmp_path / "wards.csv"
    csv_path.write_text("set,uri,label\n# exported from PACS\n"
                        "TRAIN,s3://bucket/x/IM-0001-0001.jpeg,normal\n"
                        "s3://bucket/y/person1_bacteria_2.jpeg,bacterial\n"
                        "test,a/person3_virus_7.jpeg,viral\n"
                        "TEST,b/person3_virus_7.jpeg,viral\n"
                        "TEST,b/person3_virus_7.jpeg,viral\n")  # a repeated row counts once
    keys = manifest.plan(manifest.read(csv_path), "wards")
    suffixed = re.compile(r"raw/wards/test/viral/person3_virus_7-[0-9a-f]{8}\.jpeg")
    renamed = [key for key in keys.values() if suffixed.fullmatch(key)]
    assert len(renamed) == 1  # same name, other source: kept apart, patient id still readable
    assert set(keys.values()) - set(renamed) == {
        "raw/wards/train/normal/IM-0001-0001.jpeg",
        "raw/wards/bacterial/person1_bacteria_2.jpeg",
        "raw/wards/test/viral/person3_virus_7.jpeg",
    }


def test_every_bad_row_is_named_at_once(tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("TRAIN,s3://bucket/a.png,normal\n"
                        "HOLDOUT,s3://bucket/b.png,normal\n"
                        "s3://bucket/c.png,train\n"
                        "gs://bucket/d.png,normal\n"
                        "missing.png,normal\n"
                        "s3://bucket/a.png,viral\n"
                        "s3://bucket/,normal\n"
                        "only-one-field\n")
    with pytest.raises(UserError) as caught:
        manifest.read(csv_path)
    message = str(caught.value)
    assert "7 bad rows, nothing uploaded" in message
    reasons = dict(line.strip().split(": ", 1) for line in message.splitlines()[1:])
    for line, words in ((2, "set 'HOLDOUT'"), (3, "not a split name"), (4, "only s3://"), (5, "no such file"),
                        (6, "another set or label"), (7, "not an s3://bucket/key"), (8, "expected [set,]uri,label")):
        assert words in reasons[f"line {line}"]


def test_upload_copies_s3_sources_and_uploads_local_files_resumably(deployment, tmp_path, capsys):
    s3 = boto3.client("s3")
    s3.put_object(Bucket=SOURCE, Key="2026/IM-0007-0001.jpeg", Body=corpus.jpeg(seed=1))
    (tmp_path / "local.png").write_bytes(corpus.png())
    (tmp_path / "report.pdf").write_bytes(corpus.minimal_pdf())
    csv_path = tmp_path / "wards.csv"
    csv_path.write_text(f"TRAIN,s3://{SOURCE}/2026/IM-0007-0001.jpeg,NORMAL\n"
                        "TRAIN,local.png,PNEUMONIA\n"
                        "TRAIN,report.pdf,NORMAL\n")
    assert upload_dataset.run(args(csv_path)) == 0
    out = capsys.readouterr().out
    assert "skipped line 3" in out and "1 rejected locally" in out and "2 to send" in out
    bucket = deployment.bucket("data")
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert listed == ["raw/wards/train/NORMAL/IM-0007-0001.jpeg", "raw/wards/train/PNEUMONIA/local.png"]
    assert s3.get_object(Bucket=SOURCE, Key="2026/IM-0007-0001.jpeg")["Body"].read() == corpus.jpeg(seed=1)

    assert upload_dataset.run(args(csv_path)) == 0  # nothing changed: nothing sent again
    assert "2 already there with the same checksum, 0 to send" in capsys.readouterr().out

    s3.put_object(Bucket=SOURCE, Key="2026/IM-0007-0001.jpeg", Body=corpus.jpeg(seed=2))  # a re-exported source
    assert upload_dataset.run(args(csv_path)) == 0
    assert "1 already there with the same checksum, 1 to send" in capsys.readouterr().out
    copied = s3.get_object(Bucket=bucket, Key="raw/wards/train/NORMAL/IM-0007-0001.jpeg")["Body"].read()
    assert copied == corpus.jpeg(seed=2)


def test_a_missing_s3_source_stops_before_anything_is_sent(deployment, tmp_path):
    (tmp_path / "local.png").write_bytes(corpus.png())
    csv_path = tmp_path / "wards.csv"
    csv_path.write_text(f"local.png,normal\ns3://{SOURCE}/not-there.png,normal\n")
    with pytest.raises(UserError, match=f"line 2: cannot read s3://{SOURCE}/not-there.png"):
        upload_dataset.run(args(csv_path))
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=deployment.bucket("data"))


def test_folder_and_manifest_are_exclusive(tmp_path):
    with pytest.raises(UsageError, match="either a folder DIR or --manifest"):
        upload_dataset.run(argparse.Namespace(folder=tmp_path, manifest=tmp_path / "x.csv"))
