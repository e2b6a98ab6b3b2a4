"""`cxr fsck` at scale: a check holds a small part of each record, not the records. A dataset's partition is read
whole (every key is compared with its record), so at 200,000 images what each one costs is what the check holds.
Fakes stand in for S3 and the table (thousands of objects, no moto), so tracemalloc sees the check's own memory."""

from __future__ import annotations

import tracemalloc

import seeded
from cxr.commands import fsck
from lambdas.domain import source_names

BUCKET, DATASET, COUNT = "cxr-data", "big", 4000


class FakeS3:
    """Listings in pages of 1,000, as S3 gives them: one current version per upload, an image and a sidecar each."""

    def __init__(self, records: list[dict]):
        self.raw = [seeded.raw_key(DATASET, n) for n in range(len(records))]
        self.outputs = sorted(k for r in records for k in (r["image"]["processed_key"], r["image"]["metadata_key"]))
        self.records = records

    def get_paginator(self, operation: str):
        fake = self

        class Paginator:
            @staticmethod
            def paginate(Bucket: str, Prefix: str):
                if operation == "list_object_versions":
                    keys = [k for k in fake.raw if k.startswith(Prefix)]
                    for start in range(0, len(keys), 1000):
                        yield {"Versions": [{"Key": k, "VersionId": f"v{n:032x}", "IsLatest": True}
                                            for n, k in enumerate(keys[start:start + 1000], start)]}
                else:
                    keys = [k for k in fake.outputs if k.startswith(Prefix)]
                    for start in range(0, len(keys), 1000):
                        yield {"Contents": [{"Key": k} for k in keys[start:start + 1000]]}

        return Paginator()


class FakeStore:
    def __init__(self, records: list[dict]):
        self.records_ = records

    def records(self, partition: str):
        """Each record decoded afresh, as the table's pages arrive (StateStore.records)."""
        for record in self.records_:
            yield {**record, "source": dict(record["source"]), "image": dict(record["image"]),
                   "claim": dict(record["claim"])}


def test_a_check_of_thousands_of_keys_holds_a_few_hundred_bytes_of_each_record():
    """The check held every decoded record (4.7 KB an image all told, about 950 MB at 200,000); it keeps only
    the outcome, version and output names now (under 2 KB all told, listings included)."""
    records = list(seeded.records(BUCKET, DATASET, COUNT))
    s3 = FakeS3(records)
    ingest = fsck.Ingest(s3, BUCKET, FakeStore(records), lambda key: source_names.name(seeded.SECRET, BUCKET, key))
    tracemalloc.start()
    try:
        findings = ingest.check(DATASET)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert findings == []
    assert peak < 2000 * COUNT, f"{peak / COUNT:.0f} bytes per image"
