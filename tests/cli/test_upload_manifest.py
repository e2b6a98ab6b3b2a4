"""`cxr upload-dataset --manifest`: AutoML-style CSV rows become the raw keys ingest reads (moto)."""

from __future__ import annotations

import argparse
import re

import boto3
import pytest

import corpus
from cxr import manifest, target
from cxr.commands import upload_dataset
from cxr.errors import UsageError, UserError

SOURCE = "hospital-pacs-export"


@pytest.fixture
def deployment(aws, monkeypatch):
    deployment = target.Target(session=boto3.Session(), stage="dev", account="123456789012", region="us-east-1")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=deployment.bucket("data"))
    s3.create_bucket(Bucket=SOURCE)
    monkeypatch.setattr(target, "resolve", lambda args: deployment)
    return deployment


def args(csv_path, **extra):
    return argparse.Namespace(folder=None, manifest=csv_path, dataset=None, workers=2, dry_run=False, **extra)


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
