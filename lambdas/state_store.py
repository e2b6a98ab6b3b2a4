"""The source-state table (DynamoDB): observe events, hold a key's lease, commit its outcome, claim pixels.

The rules are in :mod:`lambdas.domain.source_state`; this module is their storage. Every write that
decides something is a single conditional write, which DynamoDB applies atomically.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.exceptions import ClientError

from lambdas import aws
from lambdas.domain import source_state
from lambdas.domain.source_state import Claim

LEASE_MARGIN_S = 5
"""Added to an invocation's deadline for the lease: clocks of Lambda hosts differ by far less."""
SAFETY_S = 10
"""A holder that has less time than this left hands the key back and fails, so that Lambda retries."""


class LeaseLost(RuntimeError):
    """Another invocation took the key's lease: this one must stop writing (it outlived its deadline)."""


@dataclass(frozen=True)
class SourceRef:
    """An upload: its key (known only to the invocation handling it) and its opaque name, which is what the table
    stores (:mod:`lambdas.domain.source_names`)."""

    bucket: str
    key: str
    name: str

    @property
    def item_key(self) -> dict:
        return {"pk": {"S": source_state.partition(self.bucket, self.key)},
                "sk": {"S": source_state.source_sort_key(self.name)}}


@dataclass(frozen=True)
class Snapshot:
    """A key's record as read at the start of a round, with the counters the round must see unchanged."""

    seen: str | None
    nudges: int | None
    record: dict | None


@dataclass(frozen=True)
class Lease:
    owner: str
    snapshot: Snapshot


class StateStore:
    def __init__(self, table: str, client=None):
        self.table = table
        self.client = client or aws.client("dynamodb")

    # --- events ----------------------------------------------------------------------------------
    def arrive(self, ref: SourceRef, rank: str, until_s: float) -> tuple[str | None, Lease | None]:
        """An event of rank ``rank``: the key's lease to derive it, or why there is nothing to do.

        Returns (None, lease) for work; (DUPLICATE or SUPERSEDED, None) when the event is covered;
        (DEFERRED, None) when another invocation holds the key (it goes round again: ``seen`` moved).
        The common case, a new event for a free key, is one conditional write.
        """
        owner = uuid.uuid4().hex
        try:
            item = self.client.update_item(
                TableName=self.table, Key=ref.item_key,
                UpdateExpression="SET seen = :rank, #owner = :owner, lease_until = :until",
                ConditionExpression="(attribute_not_exists(seen) OR seen < :rank) AND "
                                    "(attribute_not_exists(#owner) OR lease_until < :now)",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":rank": {"S": rank}, **_lease_values(owner, until_s)},
                ReturnValues="ALL_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )["Attributes"]
            return None, Lease(owner, _snapshot(item))
        except ClientError as exc:
            if aws.error_code(exc) != "ConditionalCheckFailedException":
                raise
            item = exc.response.get("Item", {})
        if item.get("seen", {}).get("S", "") < rank:  # newer, but the key is held: raise seen, then try again
            self._raise_seen(ref, rank)
        elif not _pending(item) and item["done"]["S"] >= rank:
            return (source_state.DUPLICATE if item["seen"]["S"] == rank else source_state.SUPERSEDED), None
        lease = self.acquire(ref, until_s)  # a Lambda retry after a failure, or a holder that just let go
        return (None, lease) if lease else (source_state.DEFERRED, None)

    def _raise_seen(self, ref: SourceRef, rank: str) -> None:
        try:
            self.client.update_item(
                TableName=self.table, Key=ref.item_key, UpdateExpression="SET seen = :rank",
                ConditionExpression="attribute_not_exists(seen) OR seen < :rank",
                ExpressionAttributeValues={":rank": {"S": rank}},
            )
        except ClientError as exc:
            if aws.error_code(exc) != "ConditionalCheckFailedException":
                raise

    def nudge(self, ref: SourceRef) -> None:
        """Ask for the key to be derived again (a repair, or a change among its identical-pixel peers)."""
        self.client.update_item(TableName=self.table, Key=ref.item_key, UpdateExpression="ADD nudges :one",
                                ExpressionAttributeValues={":one": {"N": "1"}})

    # --- the lease -------------------------------------------------------------------------------
    def acquire(self, ref: SourceRef, until_s: float) -> Lease | None:
        """The key's lease until ``until_s`` (epoch seconds) with its record, or None while another holds it."""
        owner = uuid.uuid4().hex
        try:
            item = self.client.update_item(
                TableName=self.table, Key=ref.item_key, UpdateExpression="SET #owner = :owner, lease_until = :until",
                ConditionExpression="attribute_not_exists(#owner) OR lease_until < :now",
                ExpressionAttributeNames={"#owner": "owner"}, ExpressionAttributeValues=_lease_values(owner, until_s),
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as exc:
            if aws.error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise
        return Lease(owner, _snapshot(item))

    def snapshot(self, ref: SourceRef) -> Snapshot:
        return _snapshot(self._item(ref))

    def commit(self, ref: SourceRef, owner: str, snapshot: Snapshot, record: dict) -> bool:
        """Store the derived record; release the lease unless an event or nudge arrived since ``snapshot``.

        Returns True when released; False when the holder must derive again (it keeps the lease).
        """
        names = {"#owner": "owner"}
        values = {":owner": {"S": owner}, ":record": {"S": json.dumps(record, sort_keys=True)},
                  ":outcome": {"S": record["outcome"]}, ":done": {"S": snapshot.seen or ""},
                  ":settled": {"N": str(snapshot.nudges or 0)}, ":at": {"S": datetime.now(UTC).isoformat()}}
        update = "SET #record = :record, outcome = :outcome, done = :done, settled = :settled, updated_at = :at"
        names["#record"] = "record"
        unchanged = ["#owner = :owner",
                     "seen = :done" if snapshot.seen is not None else "attribute_not_exists(seen)",
                     "nudges = :settled" if snapshot.nudges is not None else "attribute_not_exists(nudges)"]
        try:
            self.client.update_item(TableName=self.table, Key=ref.item_key,
                                    UpdateExpression=update + " REMOVE #owner, lease_until",
                                    ConditionExpression=" AND ".join(unchanged),
                                    ExpressionAttributeNames=names, ExpressionAttributeValues=values)
            return True
        except ClientError as exc:
            if aws.error_code(exc) != "ConditionalCheckFailedException":
                raise
        try:  # something arrived meanwhile: keep what was derived, keep the lease, go again
            self.client.update_item(TableName=self.table, Key=ref.item_key, UpdateExpression=update,
                                    ConditionExpression="#owner = :owner", ExpressionAttributeNames=names,
                                    ExpressionAttributeValues=values)
        except ClientError as exc:
            if aws.error_code(exc) == "ConditionalCheckFailedException":
                raise LeaseLost(f"lost the lease of {source_state.partition(ref.bucket, ref.key)}") from None
            raise
        return False

    def release(self, ref: SourceRef, owner: str) -> None:
        """Hand the key back after a failure, so that a retry or the next event can take it at once."""
        try:
            self.client.update_item(TableName=self.table, Key=ref.item_key,
                                    UpdateExpression="REMOVE #owner, lease_until",
                                    ConditionExpression="#owner = :owner", ExpressionAttributeNames={"#owner": "owner"},
                                    ExpressionAttributeValues={":owner": {"S": owner}})
        except ClientError as exc:
            if aws.error_code(exc) != "ConditionalCheckFailedException":
                raise

    # --- identical pixels ------------------------------------------------------------------------
    def claim(self, ref: SourceRef, content_hash: str, claim: Claim) -> dict[str, Claim]:
        """Register ``ref`` as holding these pixels; returns every claim of the group by name, this one included."""
        item = self.client.update_item(
            TableName=self.table, Key=self._group_key(ref, content_hash), UpdateExpression="SET #claim = :claim",
            ExpressionAttributeNames={"#claim": source_state.CLAIM_PREFIX + ref.name},
            ExpressionAttributeValues={":claim": {"M": {"label": {"S": claim.label},
                                                        "authority": {"S": claim.authority}}}},
            ReturnValues="ALL_NEW",
        )["Attributes"]
        return _claims(item)

    def unclaim(self, ref: SourceRef, content_hash: str) -> dict[str, Claim]:
        """Withdraw ``ref``'s claim; returns the claims that remain."""
        item = self.client.update_item(
            TableName=self.table, Key=self._group_key(ref, content_hash), UpdateExpression="REMOVE #claim",
            ExpressionAttributeNames={"#claim": source_state.CLAIM_PREFIX + ref.name}, ReturnValues="ALL_NEW",
        ).get("Attributes", {})
        return _claims(item)

    # --- reading ---------------------------------------------------------------------------------
    def records(self, partition: str) -> Iterator[dict]:
        """Every source record of a partition (a dataset's, or ``incoming``), strongly consistent, page by page,
        each with ``pending`` (events or nudges not derived yet)."""
        paginator = self.client.get_paginator("query")
        pages = paginator.paginate(
            TableName=self.table, ConsistentRead=True,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :src)",
            ExpressionAttributeValues={":pk": {"S": partition}, ":src": {"S": source_state.SOURCE_PREFIX}},
        )
        for page in pages:
            for item in page["Items"]:
                if "record" in item:
                    yield {**json.loads(item["record"]["S"]), "pending": _pending(item)}
                elif "seen" in item or "nudges" in item:  # observed, never derived
                    name = item["sk"]["S"].removeprefix(source_state.SOURCE_PREFIX)
                    yield {"outcome": None, "pending": True,
                           "source": {"bucket": partition.split("/", 1)[0], "name": name, "version_id": None}}

    def _item(self, ref: SourceRef) -> dict:
        return self.client.get_item(TableName=self.table, Key=ref.item_key, ConsistentRead=True).get("Item", {})

    @staticmethod
    def _group_key(ref: SourceRef, content_hash: str) -> dict:
        return {"pk": {"S": source_state.partition(ref.bucket, ref.key)},
                "sk": {"S": source_state.group_sort_key(content_hash)}}


def handle(store: StateStore, ref: SourceRef, sequencer: str, derive: Callable[[SourceRef, dict | None], dict],
           context) -> str:
    """One S3 event for ``ref``: the outcome derived, or why there was nothing to do (duplicate, ...).

    An event without a sequencer (``cxr fsck --repair``, an asynchronous result landing) orders nothing:
    it nudges the key, which is then derived like any other.
    """
    lease = None
    if sequencer:
        no_work, lease = store.arrive(ref, source_state.sequencer_rank(sequencer), lease_deadline(context))
        if no_work:
            return no_work
    else:
        store.nudge(ref)
    return reconcile(store, ref, derive, context, lease)


def lease_deadline(context) -> float:
    """Epoch seconds past which this invocation cannot be running: its lease may lapse then."""
    return time.time() + context.get_remaining_time_in_millis() / 1000 + LEASE_MARGIN_S


def reconcile(store: StateStore, ref: SourceRef, derive: Callable[[SourceRef, dict | None], dict], context,
              lease: Lease | None = None) -> str:
    """Derive ``ref`` under its lease until no event or nudge arrived meanwhile; returns the outcome or DEFERRED.

    ``derive(ref, previous_record)`` looks at the key's current version, writes its outputs,
    retires the previous record's, and returns the new record. Without ``lease``, takes it first.
    """
    lease = lease or store.acquire(ref, lease_deadline(context))
    if lease is None:
        return source_state.DEFERRED
    owner, snapshot = lease.owner, lease.snapshot
    try:
        while True:
            record = derive(ref, snapshot.record)
            if store.commit(ref, owner, snapshot, record):
                return record["outcome"]
            if context.get_remaining_time_in_millis() < SAFETY_S * 1000:
                raise aws.TransientError("the key keeps changing; handing it back for a retry")
            snapshot = store.snapshot(ref)
    except BaseException:
        store.release(ref, owner)
        raise


def _lease_values(owner: str, until_s: float) -> dict:
    return {":owner": {"S": owner}, ":until": {"N": f"{until_s:.3f}"}, ":now": {"N": f"{time.time():.3f}"}}


def _snapshot(item: dict) -> Snapshot:
    record = json.loads(item["record"]["S"]) if "record" in item else None
    nudges = int(item["nudges"]["N"]) if "nudges" in item else None
    return Snapshot(item.get("seen", {}).get("S"), nudges, record)


def _pending(item: dict) -> bool:
    done = item.get("done", {}).get("S")
    if "record" not in item or done is None:
        return True
    settled = int(item.get("settled", {}).get("N", "0"))
    return item.get("seen", {}).get("S", "") > done or int(item.get("nudges", {}).get("N", "0")) > settled


def _claims(item: dict) -> dict[str, Claim]:
    return {name.removeprefix(source_state.CLAIM_PREFIX): Claim(value["M"]["label"]["S"], value["M"]["authority"]["S"])
            for name, value in item.items() if name.startswith(source_state.CLAIM_PREFIX)}
