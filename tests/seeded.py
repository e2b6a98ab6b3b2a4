"""Source records as ingest writes them, made up without images: what scale tests and bench/pipeline_scale.py seed.

Putting 200,000 uploads through the preprocess handler takes hours here, and PrepareDataset, `cxr status` and
the upload's checksum pass read only what ingest left behind (the source-state records, the processed PNGs and
sidecars, the raw objects), so these build that state directly. Each record has every field
``lambdas.preprocess`` writes for a processed JPEG, keys and ids derived by the same layout functions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

from lambdas.domain import layout, source_names, source_state

LABELS = ("normal", "bacterial", "viral")
FOLDERS = {"normal": "NORMAL/IM-{p:06d}-{i:04d}.jpeg", "bacterial": "PNEUMONIA/person{p}_bacteria_{i}.jpeg",
           "viral": "PNEUMONIA/person{p}_virus_{i}.jpeg"}
PER_PATIENT = 2
SECRET = b"seeded-pseudonym-key"
"""Names the seeded uploads as a deployment's pseudonym secret would (records carry names, never keys)."""


def raw_key(dataset: str, n: int) -> str:
    """Image ``n``'s upload key: patient ``n // 2``, Kermany's names, the label from the patient number."""
    patient = n // PER_PATIENT
    return f"{layout.RAW}{dataset}/train/" + FOLDERS[LABELS[patient % 3]].format(p=patient, i=n % PER_PATIENT)


def processed_record(bucket: str, dataset: str, n: int) -> dict:
    """The record ingest commits for image ``n`` (distinct pixels per image)."""
    name = source_names.name(SECRET, bucket, raw_key(dataset, n))
    label = LABELS[(n // PER_PATIENT) % 3]
    content_hash = hashlib.sha256(f"{dataset}/{n}".encode()).hexdigest()
    image_id = source_state.output_id(name, content_hash)
    return {
        "outcome": source_state.PROCESSED,
        "source": {"bucket": bucket, "name": name, "version_id": f"v{n:032x}", "size": 150_000 + n % 9_000},
        "image": {
            "dataset": dataset, "label": label, "patient_id": str(n // PER_PATIENT), "split": "train",
            "image_id": image_id, "content_hash": content_hash,
            "processed_key": layout.processed_key(dataset, label, image_id),
            "metadata_key": layout.processed_metadata_key(dataset, label, image_id),
            "stored": {"width": 256, "height": 208, "format": "PNG", "mode": "L"},
            "original": {"width": 1858, "height": 1510, "format": "JPEG", "mode": "L"},
        },
        "claim": {"content_hash": content_hash, "label": label, "authority": source_state.FOLDER},
    }


def records(bucket: str, dataset: str, count: int) -> Iterator[dict]:
    """Each record as the source-state table returns it to PrepareDataset (``StateStore.records``)."""
    for n in range(count):
        yield {**processed_record(bucket, dataset, n), "pending": False}


def table_item(record: dict) -> dict:
    """The DynamoDB item ``StateStore.commit`` leaves for a record (attribute values in the wire form)."""
    source = record["source"]
    sequencer = source_state.sequencer_rank(hashlib.sha256(source["name"].encode()).hexdigest()[:16])
    return {"pk": {"S": source_state.dataset_partition(source["bucket"], record["image"]["dataset"])},
            "sk": {"S": source_state.source_sort_key(source["name"])},
            "record": {"S": json.dumps(record, sort_keys=True)}, "outcome": {"S": record["outcome"]},
            "seen": {"S": sequencer}, "done": {"S": sequencer}, "settled": {"N": "0"},
            "updated_at": {"S": "2026-11-30T00:00:00+00:00"}}
