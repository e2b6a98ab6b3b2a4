"""Random histories of uploads, overwrites and deletes of a few keys, delivered as S3 delivers them.

Shared by the property tests (``tests/handlers/test_histories.py``, in ``make test``) and the
benchmark (``bench/ingest_histories.py``). A history is a few operations on three keys (tiny images,
broken files, identical pixels under another label); each operation's event is delivered one to
three times, at any point after the operation, some deliveries two at a time on two threads, some
while the next operation happens. It is played against ``raw/`` and the real preprocess handler
(:class:`IngestReplay`) or ``incoming/`` and the real predict handler (:class:`PredictReplay`).
After the events drain, every key's state must be what its newest version alone gives (identical
pixels under two labels being a conflict in a dataset), the outputs in S3 must be exactly the
current ones, PrepareDataset must see exactly the trainable set, and no version of an upload may
be lost. The keys carry patient names and MRNs, as hospital exports do: none of them may appear in
any object outside the uploads' prefixes (keys and bodies) or in any table item.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import threading
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from unittest import mock

from hypothesis import strategies as st
from moto.dynamodb.responses import DynamoHandler
from PIL import Image

import corpus
from cxr.local import s3_events
from cxr.local.context import LambdaContext
from infra import wiring
from ingested import PSEUDONYM_SECRET, create_state_table, name_of
from lambdas import aws, predict, prepare_dataset, preprocess
from lambdas.domain import imaging, layout, source_names, source_state
from lambdas.state_store import StateStore

DATASET = "ds"
RAW_KEYS = (f"raw/{DATASET}/NORMAL/DOE_JANE_MRN5550001_chest.png", f"raw/{DATASET}/NORMAL/ROE_RICK_MRN5550002.png",
            f"raw/{DATASET}/PNEUMONIA/DOE_JANE_MRN5550001_followup.png")
IDENTIFIERS = ("DOE_JANE", "ROE_RICK", "MRN555000")
"""What the file names say about patients: found only under the uploads' prefix."""
INCOMING_KEYS = ("incoming/DOE_JANE_MRN5550001.png", "incoming/ROE_RICK_MRN5550002.png",
                 "incoming/ward/DOE_JANE_MRN5550001.png")
DELETE = "delete"


@functools.cache
def contents() -> dict[str, bytes]:
    """What an upload may contain: two distinct tiny images, one re-encoded copy of the first, broken files."""
    first = corpus.png(32, 28, seed=1)
    return {
        "image-1": first,
        "image-1-copy": corpus.encode(Image.open(io.BytesIO(first)), "PNG", compress_level=1),
        "image-2": corpus.png(32, 28, seed=2),
        "empty": b"",
        "pdf": corpus.minimal_pdf(),
        "text": b"not an image at all\n",
    }


@dataclass(frozen=True)
class History:
    operations: tuple[tuple[int, str], ...]
    """(key number 0-2, content name or DELETE), performed in this order."""
    steps: tuple[tuple[str, tuple[int, ...]], ...]
    """("op", (i,)) performs operation i; ("deliver", (i,)) or ("pair", (i, j)) delivers their events (a pair on
    two threads at once); ("race", (i, j)) delivers event j while, on another thread, operation i is performed
    and its event delivered at once (S3 being quick while an older event is still being handled)."""


@st.composite
def histories(draw, max_operations: int = 6) -> History:
    operations = tuple(draw(st.lists(st.tuples(st.integers(0, 2), st.sampled_from([*contents(), DELETE])),
                                     min_size=1, max_size=max_operations)))
    undelivered = {i: draw(st.integers(1, 3)) for i in range(len(operations))}  # duplicates: up to 3 deliveries
    steps, performed = [], 0
    while performed < len(operations) or any(undelivered.values()):
        ready = [i for i in range(performed) for _ in range(undelivered[i])]
        more = performed < len(operations)
        kinds = (["op"] if more else []) + (["deliver"] if ready else []) + (["pair"] if len(ready) > 1 else []) + (
            ["race"] if more and ready else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "op":
            steps.append(("op", (performed,)))
            performed += 1
            continue
        if kind == "race":
            delivered = draw(st.sampled_from(ready))
            undelivered[delivered] -= 1
            undelivered[performed] -= 1
            steps.append(("race", (performed, delivered)))
            performed += 1
            continue
        size = 1 if kind == "deliver" else 2  # a pair may be one event twice, if it has two deliveries left
        chosen = [ready[p] for p in draw(st.lists(st.integers(0, len(ready) - 1), min_size=size, max_size=size,
                                                  unique=True))]
        for i in chosen:
            undelivered[i] -= 1
        steps.append((kind, tuple(chosen)))
    return History(operations, tuple(steps))


_names = itertools.count()
_dynamodb = threading.Lock()


@contextmanager
def atomic_dynamodb():
    """One DynamoDB request at a time, as AWS applies each conditional write atomically.

    moto checks a condition and then writes, with nothing between two threads' requests.
    """
    original = DynamoHandler.call_action

    def call_action(self):
        with _dynamodb:
            return original(self)

    with mock.patch.object(DynamoHandler, "call_action", call_action):
        yield


class Replay:
    """A fresh bucket and state table in the active moto account, and a history played into them.

    Subclasses name the keys, the handler, and what each key's newest version alone must give.
    """

    keys: tuple[str, ...] = ()
    uploads = ""
    """The prefix of the uploads: none of their versions may be lost."""
    outputs: tuple[str, ...] = ()
    """The prefixes of the outputs: exactly the current records' must exist there."""

    def __init__(self):
        self.n = next(_names)
        self.bucket = f"history-{self.n}"
        self.s3 = aws.client("s3")
        self.s3.create_bucket(Bucket=self.bucket)
        self.s3.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        secret = aws.client("secretsmanager").create_secret(Name=f"history-{self.n}", SecretString=PSEUDONYM_SECRET)
        self.environment = {wiring.ENV_SOURCE_STATE_TABLE: create_state_table(f"history-{self.n}"),
                            wiring.ENV_PSEUDONYM_SECRET: secret["ARN"]}
        self.store = StateStore(f"history-{self.n}")
        self.events: list[dict | None] = []
        self.versions: list[str | None] = []
        """Every version id and delete marker written, operation by operation (None: nothing happened)."""

    # --- what subclasses provide --------------------------------------------------------------------
    partition = ""

    def handler(self, event: dict, context) -> dict:
        raise NotImplementedError

    def expected(self, history: History) -> dict[str, tuple[str, str | None, str | None]]:
        """Key -> (outcome, detail, version id) from each key's newest version alone."""
        raise NotImplementedError

    def check_detail(self, record: dict, detail: str | None) -> None:
        raise NotImplementedError

    def check_more(self, expected: dict, records: dict) -> None:
        """Whatever else must agree with the records."""

    @contextmanager
    def running(self):
        """What the handler needs around it while the history plays."""
        with mock.patch.dict("os.environ", self.environment):
            yield

    # --- playing ------------------------------------------------------------------------------------
    def play(self, history: History) -> None:
        with self.running():
            for kind, indices in history.steps:
                if kind == "op":
                    self._perform(*history.operations[indices[0]])
                elif kind == "deliver":
                    self._deliver(indices[0])
                elif kind == "pair":
                    self._together(*(functools.partial(self._deliver, i) for i in indices))
                else:
                    operation, delivered = indices

                    def perform_and_deliver(operation=operation):
                        self._perform(*history.operations[operation])
                        self._deliver(operation)

                    self._together(functools.partial(self._deliver, delivered), perform_and_deliver)

    def _perform(self, slot: int, content: str) -> None:
        """Write to S3 and keep the event S3 sends for it (events[i] and versions[i] belong to operation i)."""
        index, key = len(self.events), self.keys[slot]
        self.events.append(None)
        self.versions.append(None)
        if content == DELETE:
            version = self.s3.delete_object(Bucket=self.bucket, Key=key).get("VersionId")
            if version is None:  # moto adds no delete marker to a key that never existed (S3 would): nothing happened
                return
            event = s3_events.object_created_record(self.bucket, key, 0, version_id=version,
                                                    event_name="ObjectRemoved:DeleteMarkerCreated")
        else:
            body = contents()[content]
            put = self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
            version = put["VersionId"]
            event = s3_events.object_created_record(self.bucket, key, len(body), version_id=version,
                                                    etag=put["ETag"].strip('"'))
        self.versions[index], self.events[index] = version, event

    def _deliver(self, index: int) -> dict | None:
        if self.events[index] is None:
            return None
        return self.handler(s3_events.event(self.events[index]), LambdaContext(function_name="history"))

    @staticmethod
    def _together(*calls) -> None:
        """Run the calls on threads of their own, at the same time."""
        errors: list[BaseException] = []

        def run(call) -> None:
            try:
                call()
            except BaseException as exc:  # re-raised on the main thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(call,)) for call in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    # --- what must hold once the events have drained ---------------------------------------------
    def newest(self, history: History) -> dict[str, tuple[str, str | None]]:
        """Key -> (content name or DELETE, version id) of the last operation that happened to it."""
        return {self.keys[slot]: (content, self.versions[i]) for i, (slot, content) in enumerate(history.operations)
                if self.events[i] is not None}

    def check(self, history: History) -> None:
        """Each key's record is current and what its newest version alone gives; outputs are exactly current."""
        expected = self.expected(history)
        keys = {name_of(key, self.bucket): key for key in self.keys}
        records = {keys[r["source"]["name"]]: r for r in self.store.records(self.partition)}
        assert set(records) == set(expected), (sorted(records), sorted(expected))
        for key, (outcome, detail, version) in expected.items():
            record = records[key]
            assert not record["pending"], key
            assert (record["outcome"], record["source"]["version_id"]) == (outcome, version), (key, record, expected)
            self.check_detail(record, detail)
        current_outputs = {name for r in records.values() for name in source_state.outputs(r)}
        assert set().union(*(self._listed(prefix) for prefix in self.outputs)) == current_outputs
        listing = self.s3.list_object_versions(Bucket=self.bucket, Prefix=self.uploads)
        kept = [v["VersionId"] for v in listing.get("Versions", []) + listing.get("DeleteMarkers", [])
                if not source_names.is_pointer(v["Key"])]
        assert sorted(kept) == sorted(v for v in self.versions if v)  # no upload was lost
        self.check_more(expected, records)
        self.check_no_identifier()

    def check_no_identifier(self) -> None:
        """No file name's identifier in any object (key or body) outside the uploads' prefix, or in any table."""
        listing = self.s3.list_object_versions(Bucket=self.bucket)
        written = []
        for version in listing.get("Versions", []) + listing.get("DeleteMarkers", []):
            if version["Key"].startswith(self.uploads):
                continue
            written.append(version["Key"])
            if "Size" in version and version["Key"].endswith(".json"):  # PNGs are pixels only (imaging.normalise)
                obj = self.s3.get_object(Bucket=self.bucket, Key=version["Key"], VersionId=version["VersionId"])
                written.append(obj["Body"].read().decode())
        for table in aws.client("dynamodb").list_tables()["TableNames"]:  # state, predictions, idempotency, tasks
            if table.endswith(f"-{self.n}"):
                written += [json.dumps(item) for item in aws.client("dynamodb").scan(TableName=table)["Items"]]
        text = "\n".join(written)
        assert not [i for i in self.identifiers if i in text], [i for i in self.identifiers if i in text]

    def _listed(self, prefix: str) -> set[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    def _json(self, key: str) -> dict:
        return json.loads(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())


class IngestReplay(Replay):
    """``raw/`` and the preprocess handler; PrepareDataset's view checked too."""

    keys, uploads, outputs = RAW_KEYS, layout.RAW, (layout.PROCESSED, layout.QUARANTINE)
    identifiers = IDENTIFIERS

    @property
    def partition(self) -> str:
        return source_state.dataset_partition(self.bucket, DATASET)

    def handler(self, event: dict, context) -> dict:
        return preprocess.handler(event, context)

    def expected(self, history: History) -> dict[str, tuple[str, str | None, str | None]]:
        """Key -> (outcome, content hash or reason, version id): each key's newest version alone, then conflicts."""
        expected = {key: (source_state.DELETED, None, None) if content == DELETE else (*verdict(content), version)
                    for key, (content, version) in self.newest(history).items()}
        labels = defaultdict(set)
        for key, (outcome, detail, _) in expected.items():
            if outcome == source_state.PROCESSED:
                labels[detail].add(layout.parse_raw_key(key)[1].label)
        for key, (outcome, detail, version) in expected.items():
            if outcome == source_state.PROCESSED and len(labels[detail]) > 1:
                expected[key] = (source_state.QUARANTINED, source_state.CONFLICTING_LABELS, version)
        return expected

    def check_detail(self, record: dict, detail: str | None) -> None:
        if record["outcome"] == source_state.PROCESSED:
            assert record["image"]["content_hash"] == detail, record
            sidecar = self._json(record["image"]["metadata_key"])
            assert sidecar["source"]["version_id"] == record["source"]["version_id"], record
        elif record["outcome"] == source_state.QUARANTINED:
            assert record["reason"] == detail, record

    def check_more(self, expected: dict, records: dict) -> None:
        view = prepare_dataset.load_items(self.environment[wiring.ENV_SOURCE_STATE_TABLE], self.bucket, DATASET)
        assert sorted(i.key for i in view) == sorted(records[k]["image"]["processed_key"]
                                                     for k in trainable_keys(expected, self.bucket))


class PredictReplay(Replay):
    """``incoming/`` and the predict handler, against a stand-in endpoint that labels each PNG by its digest."""

    keys, uploads, outputs = INCOMING_KEYS, layout.INCOMING, (layout.PREDICTIONS, layout.REJECTED)
    identifiers = IDENTIFIERS

    def __init__(self):
        super().__init__()
        for name, schema in (("predictions", (("pk", "HASH"), ("sk", "RANGE"))), ("idempotency", (("id", "HASH"),))):
            aws.client("dynamodb").create_table(
                TableName=f"{name}-{self.n}", BillingMode="PAY_PER_REQUEST",
                KeySchema=[{"AttributeName": a, "KeyType": t} for a, t in schema],
                AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a, _ in schema])
        aws.client("ssm").put_parameter(Name="/history/endpoint", Value="history", Type="String", Overwrite=True)
        self.environment |= {wiring.ENV_PREDICTIONS_TABLE: f"predictions-{self.n}",
                             wiring.ENV_IDEMPOTENCY_TABLE: f"idempotency-{self.n}",
                             wiring.ENV_ENDPOINT_PARAMETER: "/history/endpoint"}

    @property
    def partition(self) -> str:
        return source_state.partition(self.bucket, layout.INCOMING)

    def handler(self, event: dict, context) -> dict:
        return predict.handler(event, context)

    @contextmanager
    def running(self):
        with super().running(), mock.patch.object(predict, "invoke_endpoint", endpoint):
            yield

    def expected(self, history: History) -> dict[str, tuple[str, str | None, str | None]]:
        """Key -> (outcome, label or reason, version id): each key's newest version alone."""
        expected = {}
        for key, (content, version) in self.newest(history).items():
            if content == DELETE:
                expected[key] = (source_state.DELETED, None, None)
            elif verdict(content)[0] == source_state.PROCESSED:
                sent = imaging.normalise(contents()[content]).wire_png  # what the predict function sends
                expected[key] = (source_state.PREDICTED, label_of(sent), version)
            else:
                expected[key] = (source_state.REJECTED, verdict(content)[1], version)
        return expected

    def check_detail(self, record: dict, detail: str | None) -> None:
        if record["outcome"] == source_state.PREDICTED:
            prediction = self._json(layout.prediction_key(record["source"]["name"]))
            assert (prediction["label"], prediction["source"]["version_id"]) == (
                detail, record["source"]["version_id"]), record
        elif record["outcome"] == source_state.REJECTED:
            assert record["reason"] == detail, record

    def check_more(self, expected: dict, records: dict) -> None:
        items = aws.client("dynamodb").scan(TableName=self.environment[wiring.ENV_PREDICTIONS_TABLE])["Items"]
        recorded = {(i["pk"]["S"].split("/", 1)[1], i["sk"]["S"]) for i in items}
        for key, (outcome, _, version) in expected.items():
            if outcome == source_state.PREDICTED:
                assert (name_of(key, self.bucket), version) in recorded  # the audit trail has every current one


def label_of(png: bytes) -> str:
    return ("normal", "bacterial", "viral")[hashlib.sha256(png).digest()[0] % 3]


def endpoint(name: str, png: bytes, explain: bool = False) -> tuple[bytes, float]:
    """A stand-in for the endpoint call: a prediction that depends on the image only."""
    label = label_of(png)
    answer = {"label": label, "confidence": 0.9, "probabilities": {label: 0.9}, "pneumonia_probability": 0.5,
              "model_id": "history"}
    return json.dumps(answer).encode(), 1.0


@functools.cache
def verdict(content: str) -> tuple[str, str]:
    """(outcome, content hash or rejection code) of one upload's bytes, alone."""
    try:
        return source_state.PROCESSED, imaging.normalise(contents()[content]).content_hash
    except imaging.RejectedImage as exc:
        return source_state.QUARANTINED, exc.code


def trainable_keys(expected: dict[str, tuple[str, str | None, str | None]], bucket: str) -> list[str]:
    """Processed keys, identical pixels once (the one with the smallest name)."""
    processed = {key: detail for key, (outcome, detail, _) in expected.items() if outcome == source_state.PROCESSED}
    chosen: dict[str, str] = {}
    for key in sorted(processed, key=lambda k: name_of(k, bucket)):
        chosen.setdefault(processed[key], key)
    return sorted(chosen.values())
