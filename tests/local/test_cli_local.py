"""The `cxr` life-cycle commands against the offline cloud run as a long-lived server, each a separate process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import corpus

pytestmark = pytest.mark.slow
CXR = [sys.executable, "-m", "cxr.cli"]
QUICK = ["--hp", "architecture=compact", "--hp", "image-size=64", "--hp", "epochs=3", "--hp", "batch-size=16"]


@pytest.fixture(scope="module")
def env(module_dir):
    env = {**os.environ, "CXR_LOCAL_DIR": str(module_dir("cxr-local")),
           "AWS_EC2_METADATA_DISABLED": "true"}
    up = cxr(env, "local", "up", "--quality-gate", '{"accuracy": 0.0}')
    assert up.returncode == 0, up.stdout + up.stderr
    yield env
    down = cxr(env, "local", "down")
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not (Path(env["CXR_LOCAL_DIR"]) / "server.json").exists()


@pytest.fixture(scope="module")
def dataset(module_dir):
    from training import synthetic

    root = synthetic.write_dataset(module_dir("data") / "wards", per_class=14)
    (root / "NORMAL" / "IM-9998-0001.jpeg").write_bytes(corpus.minimal_pdf())
    return root


def cxr(env, *args, timeout=600):
    return subprocess.run([*CXR, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_life_cycle_across_separate_commands(env, dataset):
    dry = cxr(env, "upload-dataset", str(dataset), "--local", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "42 valid" in dry.stdout and "1 rejected locally" in dry.stdout and "42 to send" in dry.stdout

    upload = cxr(env, "upload-dataset", str(dataset), "--local")
    assert upload.returncode == 0, upload.stderr
    again = cxr(env, "upload-dataset", str(dataset), "--local")  # resumable: nothing new to send
    assert "42 already there with the same checksum, 0 to send" in again.stdout
    fsck = cxr(env, "fsck", "--dataset", "wards", "--local")  # ingest's state agrees with the uploads
    assert fsck.returncode == 0 and "consistent" in fsck.stdout, fsck.stdout + fsck.stderr

    train = cxr(env, "train", "--dataset", "wards", "--run-id", "cli-run", "--local", *QUICK)
    assert train.returncode == 0, train.stdout + train.stderr
    for state in ("PrepareDataset", "Train", "Evaluate", "Deploy", "NotifyDeployed"):
        assert f"state {state}" in train.stdout
    assert "gate: accuracy" in train.stdout and "deployed model" in train.stdout
    assert "gate: the model's decision rule: pass" in train.stdout
    assert "registry: v1 Approved (first-model): no champion yet" in train.stdout

    status = cxr(env, "status", "--local", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["runs"][0]["run_id"] == "cli-run" and report["runs"][0]["status"] == "SUCCEEDED"
    assert report["endpoint"]["status"] == "InService" and report["endpoint"]["run_id"] == "cli-run"
    assert report["model_metrics"]["accuracy"] is not None
    assert report["review"]["field"] == {}  # nothing reviewed yet: no figures on the site's patients
    # training wrote the evaluation report, the Evaluate step published it, status copied it out of the cloud
    assert Path(report["model_report"]).read_text().startswith("<!DOCTYPE html>")
    assert report["counts"]["processed images"] == 42

    xray = min(Path("samples/kermany-val16").rglob("*.jpeg"))
    predicted = cxr(env, "predict", str(xray), "--local", "--json")
    assert predicted.returncode == 0, predicted.stderr
    [record] = json.loads(predicted.stdout)
    assert record["status"] == "predicted" and record["label"] in ("bacterial", "normal", "viral")
    # the run's metrics.json names the model its predictions (and so their review tasks) name
    assert record["model_id"] == report["endpoint"]["model_id"]
    assert isinstance(record["refer_to_radiologist"], bool)
    direct = cxr(env, "predict", str(xray), "--local", "--direct", "--json")
    [direct_record] = json.loads(direct.stdout)
    assert direct_record["probabilities"] == pytest.approx(record["probabilities"], abs=1e-6)
    for field in ("label", "refer_to_radiologist", "referral_reasons", "threshold", "referral_band"):
        assert direct_record[field] == record[field], field  # one rule, the model's, on both paths
    digest = record["audit"]["artifact_sha256"]
    assert len(digest) == 64 and direct_record["audit"]["artifact_sha256"] == digest
    assert direct_record["audit"]["content_hash"] == record["audit"]["content_hash"]
    audited = cxr(env, "audit", record["audit"]["content_hash"], "--local")  # the trail back to the run's gate
    assert audited.returncode == 0, audited.stderr
    assert digest in audited.stdout and "training run cli-run" in audited.stdout and "matches" in audited.stdout

    table = cxr(env, "status", "--local")
    assert "endpoint cxr-local: InService" in table.stdout and "1 predictions" in table.stdout


def test_the_registry_and_batch_scoring_as_commands(env, tmp_path):
    """After the life cycle's run: its package serves, has nothing to roll back to, and scores a folder in batch."""
    listed = cxr(env, "models", "list", "--local", "--json")
    assert listed.returncode == 0, listed.stderr
    [package] = json.loads(listed.stdout)
    assert (package["version"], package["status"], package["champion"], package["run_id"]) == (
        1, "Approved", True, "cli-run")
    shown = cxr(env, "models", "show", "1", "--local")
    assert shown.returncode == 0 and "v1 Approved (serving)" in shown.stdout and "cxr:benchmark-version" in shown.stdout
    alone = cxr(env, "models", "rollback", "--local")
    assert alone.returncode == 1 and "the only approved model: nothing to roll back to" in alone.stderr
    batch = cxr(env, "batch-predict", "samples/kermany-val16", "--out", str(tmp_path / "scored"), "--local")
    assert batch.returncode == 0, batch.stdout + batch.stderr
    assert "16/16 scored" in batch.stdout and "16 file(s): 16 predicted" in batch.stdout
    assert len(list((tmp_path / "scored").rglob("*.jpeg.json"))) == 16
    assert len((tmp_path / "scored" / "predictions.csv").read_text().splitlines()) == 17


def test_a_csv_manifest_is_ingested_like_a_folder(env, dataset, tmp_path):
    def processed() -> int:
        status = cxr(env, "status", "--local", "--json")
        assert status.returncode == 0, status.stderr
        return json.loads(status.stdout)["counts"]["processed images"]

    before = processed()
    normal, pneumonia = min((dataset / "NORMAL").glob("IM-*")), min((dataset / "PNEUMONIA").glob("*virus*"))
    csv_path = tmp_path / "imported.csv"
    csv_path.write_text(f"TRAIN,{normal},normal\nTRAIN,{pneumonia},viral\nTEST,{tmp_path / 'gone.png'},normal\n")
    refused = cxr(env, "upload-dataset", "--manifest", str(csv_path), "--local")
    assert refused.returncode == 1 and "line 3: no such file" in refused.stderr and processed() == before

    import boto3  # an archive bucket in the offline cloud, as a PACS export would be in S3

    url = json.loads((Path(env["CXR_LOCAL_DIR"]) / "server.json").read_text())["url"]
    archive = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="local", aws_secret_access_key="local")
    archive.create_bucket(Bucket="pacs-export")
    archive.put_object(Bucket="pacs-export", Key="2026/11/person77_bacteria_1.jpeg",
                       Body=min((dataset / "PNEUMONIA").glob("*bacteria*")).read_bytes())
    csv_path.write_text(f"TRAIN,{normal},normal\nTRAIN,{pneumonia},viral\n"
                        "VALIDATION,s3://pacs-export/2026/11/person77_bacteria_1.jpeg,bacterial\n")
    sent = cxr(env, "upload-dataset", "--manifest", str(csv_path), "--local")
    assert sent.returncode == 0, sent.stderr
    assert "3 to send" in sent.stdout and processed() == before + 3  # the S3 copy is ingested too
    assert archive.head_object(Bucket="pacs-export", Key="2026/11/person77_bacteria_1.jpeg")  # source kept


def test_actionable_errors_are_one_line(tmp_path):
    env = {**os.environ, "CXR_LOCAL_DIR": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}
    not_running = cxr(env, "status", "--local")
    assert not_running.returncode == 1
    assert not_running.stderr.strip() == "cxr status: the offline cloud is not running: start it with `cxr local up`"

    no_credentials = {k: v for k, v in env.items() if not k.startswith("AWS_") or k == "AWS_EC2_METADATA_DISABLED"}
    no_credentials |= {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    missing = cxr(no_credentials, "status", "--region", "eu-west-1")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "no AWS credentials found" in missing.stderr
    no_region = cxr(no_credentials, "status")
    assert no_region.returncode == 1 and "no AWS region configured" in no_region.stderr

    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    (unlabelled / "x.png").write_bytes(corpus.png())
    refused = cxr(env, "upload-dataset", str(unlabelled), "--local")
    assert refused.returncode == 1 and "no recognisable labels" in refused.stderr
