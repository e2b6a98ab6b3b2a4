"""PrepareDataset on moto: the manifests the training job and the state machine rely on."""

from __future__ import annotations

import json

import boto3
import pytest

from lambdas import prepare_dataset


def put_processed(bucket: str, dataset: str, label: str, image_id: str, patient: str | None, split=None):
    s3 = boto3.client("s3")
    key = f"processed/{dataset}/{label}/{image_id}.png"
    s3.put_object(Bucket=bucket, Key=key, Body=b"\x89PNG fake")
    meta = {"label": label, "patient_id": patient, "split": split, "content_hash": image_id * 2,
            "processed_key": key, "source": {"key": f"raw/{dataset}/x/{image_id}.jpeg"}}
    s3.put_object(Bucket=bucket, Key=f"processed/{dataset}/{label}/{image_id}.json", Body=json.dumps(meta).encode())
    return key


@pytest.fixture
def dataset(data_bucket):
    keys = {}
    for p in range(60):
        label = ("normal", "bacterial", "viral")[p % 3]
        for i in range(2):
            keys[put_processed(data_bucket, "kermany", label, f"{p:04d}{i}", str(p), "train")] = str(p)
    for v in range(4):  # a Kaggle-sized val/: replaced
        put_processed(data_bucket, "kermany", "normal", f"v{v:03d}", f"v{v}", "val")
    put_processed(data_bucket, "other", "normal", "zzzz", "1")  # another dataset: not listed
    return data_bucket, keys


def test_handler_writes_jsonl_manifests_and_summary(dataset, lambda_context, monkeypatch):
    bucket, keys = dataset
    monkeypatch.setenv("DATA_BUCKET", bucket)
    out = prepare_dataset.handler({"run_id": "r1", "dataset": "kermany", "seed": 4}, lambda_context)
    assert out["classes"] == ["bacterial", "normal", "viral"]
    assert set(out["channels"]) == {"train", "validation", "test"}
    s3 = boto3.client("s3")
    seen_keys, patients_by_split = [], {}
    for split, uri in out["channels"].items():
        assert uri == f"s3://{bucket}/manifests/r1/{split}.manifest"
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"manifests/r1/{split}.manifest")["Body"].read())
        assert manifest[0] == {"prefix": f"s3://{bucket}/"}
        assert manifest[-1] == f"manifests/r1/{split}.jsonl"
        lines = s3.get_object(Bucket=bucket, Key=manifest[-1])["Body"].read().decode().splitlines()
        records = [json.loads(line) for line in lines]
        assert [r["key"] for r in records] == manifest[1:-1]
        for r in records:
            assert set(r) == {"key", "label", "patient_id", "dataset", "content_hash"}
            assert r["dataset"] == "kermany" and r["key"].startswith("processed/kermany/")
            s3.head_object(Bucket=bucket, Key=r["key"])  # every listed image exists
        seen_keys += [r["key"] for r in records]
        patients_by_split[split] = {r["patient_id"] for r in records}
    assert len(seen_keys) == len(set(seen_keys)) == 124
    assert not patients_by_split["train"] & patients_by_split["validation"]
    assert not patients_by_split["train"] & patients_by_split["test"]
    summary = json.loads(s3.get_object(Bucket=bucket, Key="manifests/r1/summary.json")["Body"].read())
    assert summary["classes"] == out["classes"]
    assert sum(summary["images"].values()) == 124
    assert any("too few" in note for note in summary["split_method"])
    assert summary["counts"]["train"]["normal"] > 0


def test_binary_run_when_no_subtypes(data_bucket, lambda_context, monkeypatch):
    monkeypatch.setenv("DATA_BUCKET", data_bucket)
    for p in range(20):
        put_processed(data_bucket, "mnist", ("normal", "pneumonia")[p % 2], f"{p:05d}", None)
    out = prepare_dataset.handler({"run_id": "r2", "dataset": "mnist"}, lambda_context)
    assert out["classes"] == ["normal", "pneumonia"]


def test_missing_dataset_is_a_clear_error(data_bucket, lambda_context, monkeypatch):
    monkeypatch.setenv("DATA_BUCKET", data_bucket)
    with pytest.raises(prepare_dataset.DatasetError, match="no processed images"):
        prepare_dataset.handler({"run_id": "r3", "dataset": "nothing"}, lambda_context)
