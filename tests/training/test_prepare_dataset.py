"""PrepareDataset on moto: manifests from the dataset's current records, as the real ingest leaves them."""

from __future__ import annotations

import json

import boto3
import pytest

import corpus
from ingested import ingest, kermany_like, remove
from lambdas import aws, prepare_dataset
from lambdas.domain import imaging


@pytest.fixture
def dataset(data_bucket, state_table, monkeypatch):
    monkeypatch.setenv("DATA_BUCKET", data_bucket)
    uploads = kermany_like(30, per_patient=2)
    uploads |= kermany_like(4, labels=("normal",), prefix="raw/kermany/val/", first=100)  # Kaggle-sized: replaced
    uploads |= kermany_like(2, prefix="raw/other/", first=200)  # another dataset: not listed
    assert ingest(data_bucket, uploads)["accepted"] == len(uploads)
    return data_bucket


def manifest_sources(bucket: str, run_id: str, out: dict) -> dict[str, list[dict]]:
    """Split -> the jsonl records of its manifest."""
    s3 = boto3.client("s3")
    by_split = {}
    for split in out["channels"]:
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"manifests/{run_id}/{split}.manifest")["Body"].read())
        lines = s3.get_object(Bucket=bucket, Key=manifest[-1])["Body"].read().decode().splitlines()
        by_split[split] = [json.loads(line) for line in lines]
    return by_split


def test_handler_writes_jsonl_manifests_and_summary(dataset, lambda_context):
    bucket = dataset
    out = prepare_dataset.handler({"run_id": "r1", "dataset": "kermany", "seed": 4}, lambda_context)
    assert out["classes"] == ["bacterial", "normal", "viral"]
    assert set(out["channels"]) == {"train", "validation", "test", "benchmark"}
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
            assert set(r) - {"benchmark_version"} == {"key", "label", "patient_id", "dataset", "content_hash"}
            assert r["dataset"] == "kermany" and r["key"].startswith("processed/kermany/")
            s3.head_object(Bucket=bucket, Key=r["key"])  # every listed image exists
        seen_keys += [r["key"] for r in records]
        patients_by_split[split] = {r["patient_id"] for r in records}
    assert len(seen_keys) == len(set(seen_keys)) == 64
    assert not patients_by_split["train"] & patients_by_split["validation"]
    assert not patients_by_split["train"] & patients_by_split["test"]
    assert not patients_by_split["benchmark"] & (patients_by_split["train"] | patients_by_split["validation"]
                                                 | patients_by_split["test"])
    summary = json.loads(s3.get_object(Bucket=bucket, Key="manifests/r1/summary.json")["Body"].read())
    assert summary["classes"] == out["classes"]
    assert sum(summary["images"].values()) == 64
    assert any("too few" in note for note in summary["split_method"])
    assert summary["counts"]["train"]["normal"] > 0


def test_only_current_outcomes_reach_the_manifests(dataset, lambda_context):
    """Overwritten, broken, deleted and conflicting uploads leave nothing stale for training to read."""
    bucket, s3 = dataset, boto3.client("s3")
    folder = "raw/kermany/train/NORMAL/"
    overwritten, broken, deleted, copied = (f"{folder}IM-{p:04d}-0000.png" for p in (0, 3, 6, 9))
    old_pixels = imaging.normalise(s3.get_object(Bucket=bucket, Key=overwritten)["Body"].read()).content_hash
    new_pixels = imaging.normalise(corpus.png(40, 32, seed=777)).content_hash
    copy = s3.get_object(Bucket=bucket, Key=copied)["Body"].read()
    ingest(bucket, {overwritten: corpus.png(40, 32, seed=777), broken: corpus.minimal_pdf(),
                    "raw/kermany/train/PNEUMONIA/person9999_virus_1.png": copy})  # same pixels, labelled viral
    remove(bucket, deleted)

    out = prepare_dataset.handler({"run_id": "r2", "dataset": "kermany"}, lambda_context)
    records = [r for rs in manifest_sources(bucket, "r2", out).values() for r in rs]
    hashes = {r["content_hash"] for r in records}
    assert new_pixels in hashes and old_pixels not in hashes
    assert imaging.normalise(copy).content_hash not in hashes
    for gone in (broken, deleted):
        assert imaging.normalise(corpus.png(40, 32, seed=1000 * int(gone[-13:-9]))).content_hash not in hashes
    assert len(records) == 64 - 3


def test_records_are_read_page_by_page(dataset, lambda_context, monkeypatch):
    pages = []

    def small_pages(params, **kwargs):
        params["Limit"] = 7
        pages.append(params.get("ExclusiveStartKey"))

    aws.client("dynamodb").meta.events.register("provide-client-params.dynamodb.Query", small_pages)
    try:
        out = prepare_dataset.handler({"run_id": "r3", "dataset": "kermany"}, lambda_context)
    finally:
        aws.client("dynamodb").meta.events.unregister("provide-client-params.dynamodb.Query", small_pages)
    assert sum(out["images"].values()) == 64 and len(pages) > 64 // 7


def test_binary_run_when_no_subtypes(data_bucket, state_table, lambda_context, monkeypatch):
    monkeypatch.setenv("DATA_BUCKET", data_bucket)
    ingest(data_bucket, kermany_like(20, labels=("normal", "pneumonia"), prefix="raw/mnist/"))
    out = prepare_dataset.handler({"run_id": "r2", "dataset": "mnist"}, lambda_context)
    assert out["classes"] == ["normal", "pneumonia"]


def test_missing_dataset_is_a_clear_error(data_bucket, state_table, lambda_context, monkeypatch):
    monkeypatch.setenv("DATA_BUCKET", data_bucket)
    with pytest.raises(prepare_dataset.DatasetError, match="no processed images"):
        prepare_dataset.handler({"run_id": "r3", "dataset": "nothing"}, lambda_context)


def test_train_validation_and_test_are_packed_into_shards_in_jsonl_order(dataset, lambda_context):
    """PrepareDataset reads no PNG: it returns one packing item per split here (fewer than 128 images), and the
    PackShards function packs each. The shards hold each split's records (the jsonl's lines, in order) and the
    processed PNGs themselves; key order is shard order; the benchmark set stays a manifest."""
    import io

    from lambdas import pack_shards
    from lambdas.domain import shards

    bucket, s3 = dataset, boto3.client("s3")
    reads = []

    def read(params, **kwargs):
        reads.append(params["Key"])

    aws.client("s3").meta.events.register("provide-client-params.s3.GetObject", read)
    try:
        out = prepare_dataset.handler({"run_id": "r1", "dataset": "kermany", "seed": 4}, lambda_context)
    finally:
        aws.client("s3").meta.events.unregister("provide-client-params.s3.GetObject", read)
    assert not [key for key in reads if key.startswith("processed/")]
    assert [item["split"] for item in out["packing"]] == ["train", "validation", "test"]
    assert len(json.dumps(out["packing"])) < 4096  # the state machine's payload stays small
    for item in out["packing"]:
        assert pack_shards.handler(item, lambda_context) == {"split": item["split"], "shards": len(item["sizes"]),
                                                             "images": out["images"][item["split"]]}
    assert set(out["shards"]) == {"train", "validation", "test"}
    summary = json.loads(s3.get_object(Bucket=bucket, Key="manifests/r1/summary.json")["Body"].read())
    for split, uri in out["shards"].items():
        assert uri == f"s3://{bucket}/manifests/r1/shards/{split}/"
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=uri.split("/", 3)[3])["Contents"]]
        assert keys == [f"manifests/r1/shards/{split}/{shards.name(i)}" for i in range(len(keys))]
        assert len(keys) == summary["shards"][split] == summary["images"][split]  # fewer images than 128: one each
        packed = [pair for key in keys for pair in shards.read(io.BytesIO(
            s3.get_object(Bucket=bucket, Key=key)["Body"].read()))]
        lines = s3.get_object(Bucket=bucket, Key=f"manifests/r1/{split}.jsonl")["Body"].read().decode().splitlines()
        assert [record for record, _ in packed] == [json.loads(line) for line in lines]
        for record, png in packed:
            assert png == s3.get_object(Bucket=bucket, Key=record["key"])["Body"].read()


def test_local_staging_writes_the_manifests_without_the_aws_sdk():
    """``cxr train-local`` stages with the pure manifest helpers (lambdas/domain/manifests.py), not the Lambda."""
    import subprocess
    import sys

    probe = ("import sys, cxr.training_run\n"
             "print(sorted({'boto3', 'botocore', 'aws_lambda_powertools'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"
