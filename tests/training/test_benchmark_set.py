"""The fixed benchmark set: drawn once, patient-grouped and stratified, never trained on again (moto)."""

from __future__ import annotations

import json

import boto3
import pytest

import corpus
from ingested import ingest, kermany_like
from lambdas import benchmark_set, prepare_dataset
from lambdas.domain import benchmark, splits


@pytest.fixture
def dataset(data_bucket, state_table, monkeypatch):
    monkeypatch.setenv("DATA_BUCKET", data_bucket)
    assert ingest(data_bucket, kermany_like(66, per_patient=2))["accepted"] == 132
    return data_bucket


def channel_records(bucket: str, run_id: str, name: str) -> list[dict]:
    lines = boto3.client("s3").get_object(Bucket=bucket, Key=f"manifests/{run_id}/{name}.jsonl")["Body"].read()
    return [json.loads(line) for line in lines.decode().splitlines()]


def test_drawn_once_and_kept_out_of_every_later_split(dataset, lambda_context):
    bucket = dataset
    first = prepare_dataset.handler({"run_id": "r1", "dataset": "kermany"}, lambda_context)
    stored = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=benchmark.key("kermany"))["Body"].read())
    assert first["benchmark_version"] == stored["version"] == benchmark.version(stored["members"])
    assert stored["counts"] == {"bacterial": 6, "normal": 6, "viral": 6} and stored["images"] == 18  # 2 per patient
    # a second upload of new patients, and a benchmark patient's new X-ray under another key
    member = stored["members"][0]
    patient = int(member["patient_id"])
    extra = kermany_like(1, per_patient=3, first=patient)  # the same patient number: the same patient id
    extra = {k: corpus.png(40, 32, seed=99_000 + n) for n, k in enumerate(sorted(extra)) if k.endswith("2.png")}
    ingest(bucket, extra | kermany_like(9, per_patient=1, first=300))
    second = prepare_dataset.handler({"run_id": "r2", "dataset": "kermany"}, lambda_context)
    assert second["benchmark_version"] == first["benchmark_version"]
    bench = channel_records(bucket, "r2", "benchmark")
    assert {r["content_hash"] for r in bench} == {m["content_hash"] for m in stored["members"]}
    assert {r["benchmark_version"] for r in bench} == {stored["version"]}
    benched_patients = {m["patient_id"] for m in stored["members"]}
    for name in ("train", "validation", "test"):
        records = channel_records(bucket, "r2", name)
        assert not {r["patient_id"] for r in records} & benched_patients, name
        assert not {r["content_hash"] for r in records} & {r["content_hash"] for r in bench}
    summary = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key="manifests/r2/summary.json")["Body"].read())
    assert "1 other images of its patients left out" in summary["benchmark"]["note"]


def test_a_small_dataset_gets_no_benchmark_and_an_empty_channel(data_bucket, state_table, lambda_context, monkeypatch):
    monkeypatch.setenv("DATA_BUCKET", data_bucket)
    ingest(data_bucket, kermany_like(57, per_patient=2))  # 19 patients per label
    out = prepare_dataset.handler({"run_id": "r1", "dataset": "kermany"}, lambda_context)
    assert out["benchmark_version"] == "none" and channel_records(data_bucket, "r1", "benchmark") == []
    assert benchmark_set.read(data_bucket, "kermany") is None
    summary = boto3.client("s3").get_object(Bucket=data_bucket, Key="manifests/r1/summary.json")["Body"].read()
    summary = json.loads(summary)
    assert "no benchmark set yet" in summary["benchmark"]["note"]


def test_a_concurrent_draw_loses_to_the_stored_set(data_bucket, monkeypatch):
    """The bucket alone (``read`` is replaced and the items are given): no ingested dataset needed."""
    first, _ = benchmark.draw([splits.Item(f"k{i}", "normal" if i % 2 else "viral", str(i), f"h{i}")
                               for i in range(40)], "kermany", "other-run", "2026-01-01T00:00:00+00:00")
    monkeypatch.setattr(benchmark_set, "read", lambda bucket, dataset, calls=[]: calls.append(1) or (
        None if len(calls) == 1 else first))
    boto3.client("s3").put_object(Bucket=data_bucket, Key=benchmark.key("kermany"), Body=json.dumps(first).encode())
    got, note = benchmark_set.load_or_draw(data_bucket, "kermany", "this-run", [
        splits.Item(f"x{i}", "normal" if i % 2 else "viral", str(i), f"x{i}") for i in range(40)])
    assert got == first and note == "stored by a concurrent run"


def test_draw_is_patient_grouped_stratified_and_deterministic():
    items = [splits.Item(f"k{p}-{i}", ("normal", "bacterial", "viral")[p % 3], str(p), f"h{p}-{i}")
             for p in range(90) for i in range(p % 3 + 1)]
    items.append(splits.Item("dup", "normal", None, "h3-0"))  # identical pixels to patient 3's first image
    items.append(splits.Item("test/x", "normal", "999", "t"))
    drawn, _ = benchmark.draw(items, "d", "r", "now")
    again, _ = benchmark.draw(list(reversed(items)), "d", "r", "now")
    assert drawn["version"] == again["version"]
    members = {m["key"] for m in drawn["members"]}
    patients = {m["patient_id"] for m in drawn["members"]}
    for item in items:  # a patient is all in or all out; identical pixels go with their twin
        assert (item.key in members) == (item.patient_id in patients or (item.key == "dup" and "k3-0" in members))
    assert drawn["counts"]["normal"] and drawn["counts"]["bacterial"] and drawn["counts"]["viral"]
    kept, excluded = benchmark.exclude(items, drawn)
    assert excluded == len(members) and not {i.key for i in kept} & members
