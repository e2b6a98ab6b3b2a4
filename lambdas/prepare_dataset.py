"""PrepareDataset Lambda (training pipeline): processed images -> split manifests for the training job.

Input ``{"run_id", "dataset"[, "validation_fraction", "test_fraction", "seed"]}``. Reads the dataset's
current source records from the source-state table (page by page; never a bucket listing, which
would also find superseded outputs), keeps what :func:`lambdas.domain.source_state.training_view`
allows (processed, identical pixels once, no label conflict), splits with :mod:`lambdas.domain.splits`
and writes, for each of train/validation/test, ``manifests/<run>/<split>.jsonl`` (one record per
image) and ``manifests/<run>/<split>.manifest`` (a SageMaker ``ManifestFile``: the PNGs plus the
jsonl, so a channel lands as ``<channel>/<key>``), then ``manifests/<run>/summary.json``.
Train, validation and test are also packed into tar shards (``manifests/<run>/shards/<split>/``), which is what
the Train state reads: a few large objects instead of one per image. This function only plans them
(:func:`lambdas.domain.shards.plan`) and returns the packing work items (:mod:`lambdas.domain.packing`), which the
PackShards Map state hands to :mod:`lambdas.pack_shards`: it reads no PNG, so its time grows with the number of
records, not with the bytes of the dataset. The jsonl stays the run's record of what it trained on; the
``.manifest`` files stay beside the shards so a ``File``-mode job (or a user's own) can still read the same
splits image by image.
Returns the manifest and shard URIs, the packing items and the class list for CreateTrainingJob.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import Iterable

from aws_lambda_powertools import Logger

from lambdas import aws, benchmark_set, shard_writer
from lambdas.domain import benchmark, labels, packing, shards, source_state, splits
from lambdas.domain.manifests import build_summary, jsonl_key, manifest_key, manifest_records, summary_key
from lambdas.state_store import StateStore

logger = Logger(service="cxr-prepare-dataset")


class DatasetError(ValueError):
    """The dataset cannot be trained on (missing, or fewer than two classes); the pipeline fails clearly."""


def put_spooled(s3, bucket: str, key: str, content_type: str, parts: Iterable[str]) -> str:
    """PUT text written part by part to a temporary file (Lambda's /tmp), never whole in memory: a manifest of
    200,000 images is tens of MB, and a string plus its encoded copy would hold it twice. Returns the ETag."""
    with tempfile.TemporaryFile() as spool:
        for part in parts:
            spool.write(part.encode())
        spool.seek(0)
        return s3.put_object(Bucket=bucket, Key=key, Body=spool, ContentType=content_type)["ETag"]


def load_items(table: str, bucket: str, dataset: str) -> list[splits.Item]:
    """The images a run may train on: the dataset's current records, as the source-state table holds them."""
    view = source_state.training_view(StateStore(table).records(source_state.dataset_partition(bucket, dataset)))
    return [splits.Item(key=i.key, label=i.label, patient_id=i.patient_id, content_hash=i.content_hash,
                        user_split=i.split) for i in view]


def prepare(table: str, bucket: str, run_id: str, dataset: str, validation_fraction=0.15, test_fraction=0.15,
            seed=0) -> dict:
    items = load_items(table, bucket, dataset)
    if not items:
        raise DatasetError(f"no processed images in dataset {dataset!r} (raw/{dataset}/): upload a dataset first")
    classes = labels.class_set({i.label for i in items})
    if len(classes) < 2:
        raise DatasetError(f"the dataset has a single class {classes}: at least two are needed")
    s3 = aws.client("s3")
    bench, bench_note = benchmark_set.load_or_draw(bucket, dataset, run_id, items)
    bench_members = benchmark.current_members(items, bench) if bench else []
    if bench:
        items, excluded = benchmark.exclude(items, bench)
        bench_note = (f"benchmark set {bench['version']}: {len(bench_members)} of its {bench['images']} images "
                      f"current; {excluded - len(bench_members)} other images of its patients left out of train, "
                      "validation and test")
    items, bench_members = ([
        splits.Item(i.key, labels.training_label(i.label, classes), i.patient_id, i.content_hash, i.user_split)
        for i in group] for group in (items, bench_members))
    params = {"validation_fraction": validation_fraction, "test_fraction": test_fraction, "seed": seed}
    result = splits.split_items(items, validation_fraction, test_fraction, seed)
    channels, planned, work = {}, {}, []
    for name, members in {**result.splits, benchmark_set.CHANNEL: bench_members}.items():
        if not members and name != benchmark_set.CHANNEL:  # the benchmark channel holds its (empty) jsonl
            raise DatasetError(f"the {name} split is empty: the dataset is too small to split by patient")
        # the training job records which set its benchmark answers are on (members imply a set)
        extra = {"benchmark_version": bench["version"]} if name == benchmark_set.CHANNEL and members else {}
        blocks = shards.plan(len(members)) if name != benchmark_set.CHANNEL else []  # Train reads 3 splits' shards
        groups = packing.group(blocks)
        offsets = packing.Offsets(packing.first_records(blocks, groups))
        etag = put_spooled(s3, bucket, jsonl_key(run_id, name), "application/jsonl", offsets.lines(
            json.dumps({**r, **extra}, sort_keys=True) + "\n" for r in manifest_records(members, dataset)))
        entries = (json.dumps(entry) for entry in ({"prefix": f"s3://{bucket}/"}, *(i.key for i in members),
                                                    jsonl_key(run_id, name)))
        put_spooled(s3, bucket, manifest_key(run_id, name), "application/json",
                    itertools.chain("[", itertools.chain.from_iterable(
                        (", " if n else "", e) for n, e in enumerate(entries)), "]"))
        channels[name] = f"s3://{bucket}/{manifest_key(run_id, name)}"
        if blocks:
            planned[name] = len(blocks)
            work += packing.items(run_id, name, jsonl_key(run_id, name), etag, blocks, groups, offsets)
    summary = build_summary(result, dataset, run_id, classes, params)
    summary["images"][benchmark_set.CHANNEL] = len(bench_members)
    summary["shards"] = planned
    summary["benchmark"] = {"version": bench["version"] if bench else None, "images": len(bench_members),
                            "uri": f"s3://{bucket}/{benchmark.key(dataset)}" if bench else None, "note": bench_note}
    s3.put_object(Bucket=bucket, Key=summary_key(run_id), Body=json.dumps(summary, indent=1).encode(),
                  ContentType="application/json")
    return {
        "run_id": run_id,
        "dataset": dataset,
        "classes": classes,
        "channels": channels,
        "shards": {name: f"s3://{bucket}/{shard_writer.prefix(run_id, name)}" for name in planned},
        "packing": work,
        "summary_uri": f"s3://{bucket}/{summary_key(run_id)}",
        "images": summary["images"],
        "benchmark_version": bench["version"] if bench else "none",
    }


@logger.inject_lambda_context(log_event=False)
def handler(event: dict, context) -> dict:
    output = prepare(
        os.environ["SOURCE_STATE_TABLE"],
        os.environ["DATA_BUCKET"],
        run_id=str(event["run_id"]),
        dataset=str(event["dataset"]),
        validation_fraction=float(event.get("validation_fraction", 0.15)),
        test_fraction=float(event.get("test_fraction", 0.15)),
        seed=int(event.get("seed", 0)),
    )
    logger.info("dataset prepared", extra={"run_id": output["run_id"], "images": output["images"],
                                           "classes": output["classes"]})
    return output
