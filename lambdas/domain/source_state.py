"""One current outcome per source key: the rules, free of AWS calls.

The problem. S3 delivers notifications at least once and in any order; a key can be overwritten
or deleted at any time; two invocations for one key can run at once. Ingest used to write its
outputs per event, so two versions of ``raw/<k>`` left two processed images, a valid version
followed by a PDF left both a processed image and a quarantine record, and training read them all.

The design.

* **A state record per source key** (``raw/...`` in the data bucket, ``incoming/...`` in the
  inference bucket), in one DynamoDB table (``infra.wiring.SOURCE_STATE_TABLE``): partition
  ``<bucket>/<scope>`` (``raw/<dataset>`` or ``incoming``), sort key ``src#<name>``, the key's opaque
  name (:mod:`lambdas.domain.source_names`: keys carry patient identifiers, records never do). It holds the
  key's one current outcome (processed, quarantined, deleted; predicted, rejected, deleted) and
  the outputs that outcome owns. PrepareDataset reads these records, never a bucket listing.
* **The outcome is derived from the key's current version** (GetObject without a version id at
  handling time), never from the event's type or version. Any event for a key, created or
  removed, in any order, means "look at the key again"; the last event S3 sends for a key is
  handled after the last write to it, so it sees the final version.
* **Sequencers deduplicate.** Each event's ``sequencer`` is raised into the record's ``seen``
  with a conditional write (``seen < :rank``, atomic in DynamoDB): an event at or below ``seen``
  that is already ``done`` is a ``duplicate`` (equal) or ``superseded`` (older), counted as such
  and not reprocessed. S3 documents the comparison: sequencers of one key compare as hex strings
  after left-padding the shorter with zeros ("Event message structure", Amazon S3 User Guide);
  :func:`sequencer_rank` pads every sequencer to one width so DynamoDB's string order is S3's.
* **One writer per key at a time.** Outputs live in S3, which DynamoDB cannot update in the same
  transaction, so a key's work runs under a lease on its record (a conditional write of
  ``owner``, expiring after the invocation's own deadline). An event that finds the lease taken
  has already raised ``seen``; the holder re-reads ``seen`` (and ``nudges``) before releasing and
  goes round again if either moved, so no event is lost and no two invocations write one key's
  outputs. A holder that dies leaves the lease to expire; Lambda's retry of its event finishes
  the work (``seen > done``), and ``cxr fsck`` finds anything left behind.
* **Superseded outputs are tombstoned**: deleted without a version id, which in a versioned
  bucket adds a delete marker and keeps every version (and never touches a version under
  Object Lock). Originals under ``raw/`` and ``incoming/`` are never deleted.
* **Each source key owns its outputs**: a processed image is named from its pixels *and* its
  source's name (:func:`output_id`), so retiring one upload's image can never remove another's.
  Identical pixels with one label train once (:func:`training_view` keeps the smallest name).
* **Label conflicts.** Identical pixels (one content hash) under different labels in one
  dataset cannot both be right. Each processed key claims its hash in a group record
  (``grp#<hash>`` in the dataset's partition; one attribute per claiming key's name, so claims are
  single atomic writes). :func:`resolve_group` decides: with two labels every claimant is
  quarantined as ``conflicting_labels``, naming the others, and none trains until an upload is
  removed or corrected; a key whose claim changes nudges the others so they re-derive. A
  radiologist's verdict resolves a group: a claim with ``authority="review"`` (an upload carrying
  :data:`REVIEW_METADATA`, which the review loop will set on the copy it writes into ``raw/``)
  fixes the label, and folder claims that disagree with it are quarantined.
* **Repair.** An event without a sequencer (what ``cxr fsck --repair`` sends) orders nothing: it
  nudges the key, which is then re-derived like any other.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import layout

# Outcome kinds.
PROCESSED = "processed"
QUARANTINED = "quarantined"
DELETED = "deleted"
PREDICTED = "predicted"
REJECTED = "rejected"
SUBMITTED = "submitted"
"""Queued on an asynchronous endpoint: nothing is current until its result lands."""

# What an event amounted to, as handlers count it.
DUPLICATE = "duplicate"
"""The very event was handled before (S3 delivered it again): no new work."""
SUPERSEDED = "superseded"
"""An older event arriving after a newer one of the same key was handled: no new work."""
DEFERRED = "deferred"
"""Another invocation holds the key: it re-derives the key before it lets go."""

CONFLICTING_LABELS = "conflicting_labels"
OVERRULED = "overruled_by_review"

FOLDER = "folder"
REVIEW = "review"
REVIEW_METADATA = "cxr-review-verdict"
"""S3 user metadata (``x-amz-meta-cxr-review-verdict``) marking an upload as a radiologist's verdict."""

SEQUENCER_WIDTH = 64
SOURCE_PREFIX = "src#"
GROUP_PREFIX = "grp#"
CLAIM_PREFIX = "claim:"
"""Group records hold one attribute per claiming key: ``claim:<name>`` -> ``{label, authority}``."""


def sequencer_rank(sequencer: str) -> str:
    """A sequencer as a fixed-width string whose order is S3's order for one key.

    S3: "to compare these values, first left-pad the shorter value with zeros, and then do a
    lexicographical comparison". Upper case, since hex digits may come in either.
    """
    text = sequencer.strip().upper()
    if len(text) > SEQUENCER_WIDTH or any(c not in "0123456789ABCDEF" for c in text):
        raise ValueError(f"not an S3 sequencer: {sequencer!r}")
    return text.rjust(SEQUENCER_WIDTH, "0")


def scope(key: str) -> str:
    """The partition a key's record lives in: its dataset for ``raw/`` keys, ``incoming`` for predictions."""
    if key.startswith(layout.RAW):
        dataset, sep, _ = key[len(layout.RAW):].partition("/")
        return f"{layout.RAW}{dataset}" if sep and dataset else layout.RAW.rstrip("/")
    return layout.INCOMING.rstrip("/")


def partition(bucket: str, key: str) -> str:
    return f"{bucket}/{scope(key)}"


def dataset_partition(bucket: str, dataset: str) -> str:
    return f"{bucket}/{layout.RAW}{dataset}"


def source_sort_key(source_name: str) -> str:
    return f"{SOURCE_PREFIX}{source_name}"


def group_sort_key(content_hash: str) -> str:
    return f"{GROUP_PREFIX}{content_hash}"


def output_id(source_name: str, content_hash: str) -> str:
    """Name stem of a processed image: from its pixels and its source's name, so each upload owns its outputs."""
    return hashlib.sha256(f"{source_name}\n{content_hash}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Claim:
    label: str
    authority: str = FOLDER


@dataclass(frozen=True)
class GroupVerdict:
    """What a group of identical pixels means for one of its keys."""

    trains: bool
    reason: str | None = None
    others: tuple[tuple[str, str], ...] = ()
    """(name, label) of the claims this key disagrees with."""

    def message(self, label: str) -> str:
        named = "; ".join(f"{name} ({other})" for name, other in self.others)
        if self.reason == OVERRULED:
            return f"a radiologist's verdict labels these pixels otherwise: {named}; this {label} upload does not train"
        return (f"identical pixels were also uploaded under {named}; labelled {label} here, so none of these "
                "uploads trains until one of them is removed or corrected")


def resolve_group(claims: Mapping[str, Claim]) -> dict[str, GroupVerdict]:
    """Each claimant's verdict: train, or quarantine as ``conflicting_labels`` / ``overruled_by_review``.

    Review claims decide when there are any (a disagreement among reviews is itself a conflict);
    otherwise one label trains and two or more conflict.
    """
    reviews = {key: c for key, c in claims.items() if c.authority == REVIEW}
    deciding = reviews or dict(claims)
    labels = {c.label for c in deciding.values()}
    verdicts = {}
    for key, claim in claims.items():
        if len(labels) > 1:
            others = tuple(sorted((k, c.label) for k, c in deciding.items() if c.label != claim.label))
            verdicts[key] = GroupVerdict(False, CONFLICTING_LABELS, others)
        elif claim.label in labels:
            verdicts[key] = GroupVerdict(True)
        else:
            verdicts[key] = GroupVerdict(False, OVERRULED, tuple(sorted((k, c.label) for k, c in reviews.items())))
    return verdicts


def outputs(record: Mapping) -> tuple[str, ...]:
    """The objects a record's outcome owns (the image and its sidecar, the prediction and its overlay, or one
    error document)."""
    kind, source = record["outcome"], record["source"]
    name = source["name"]
    if kind == PROCESSED:
        return record["image"]["processed_key"], record["image"]["metadata_key"]
    if kind == QUARANTINED:
        return (layout.quarantine_key(source["scope"], name),)
    if kind == PREDICTED:
        explained = "explanation" in record.get("prediction", {})
        reported = "dicom_sr" in record.get("prediction", {})
        return (layout.prediction_key(name), *([layout.overlay_key(name)] if explained else []),
                *([layout.structured_report_key(name)] if reported else []))
    if kind == REJECTED:
        return (layout.rejected_key(name),)
    return ()


def sidecar(record: Mapping) -> dict:
    """The JSON written beside a processed image (what a person or a tool reads next to the PNG)."""
    image = record["image"]
    return {"source": record["source"], **{k: image[k] for k in (
        "dataset", "label", "patient_id", "split", "image_id", "content_hash", "processed_key", "stored", "original",
        "dicom") if k in image}}


def error_document(record: Mapping) -> dict:
    """``quarantine/<key>.error.json`` / ``rejected/<key>.error.json``: the reason, for people and tools."""
    document = {"source": record["source"], "reason": record["reason"], "message": record["message"]}
    if record.get("conflicts_with"):
        document["conflicts_with"] = [{"name": n, "label": label} for n, label in record["conflicts_with"]]
    return document


@dataclass(frozen=True, slots=True)
class TrainingItem:
    key: str
    """The processed image's key."""
    source_name: str
    label: str
    patient_id: str | None
    content_hash: str
    split: str | None


def training_view(records: Iterable[Mapping]) -> list[TrainingItem]:
    """What a training run may read: current processed records, identical pixels once, no label conflict.

    Conflicts are quarantined at ingest; checking again here keeps a run safe from a record caught
    mid-update. Of identical pixels the copy kept, and the order of the items, do not depend on the names
    (a deployment's secret decides them): by patient id and split, then content hash. One pass that keeps a
    compact item per content hash and none of the records, so a dataset of 200,000 records is read as they
    stream in (bench/pipeline_scale.py).
    """
    chosen: dict[str, tuple[tuple, TrainingItem]] = {}
    conflicted: set[str] = set()
    for record in records:
        if record.get("outcome") != PROCESSED:
            continue
        image, order = record["image"], _stable_order(record)
        content_hash, kept = image["content_hash"], chosen.get(image["content_hash"])
        if kept is not None and kept[1].label != image["label"]:
            conflicted.add(content_hash)
        if kept is None or order < kept[0]:  # identical pixels train once, the copy first in the stable order
            chosen[content_hash] = order, TrainingItem(
                key=image["processed_key"], source_name=record["source"]["name"], label=image["label"],
                patient_id=image.get("patient_id"), content_hash=content_hash, split=image.get("split"))
    return sorted((item for content_hash, (_, item) in chosen.items() if content_hash not in conflicted),
                  key=lambda item: (item.content_hash, item.source_name))


def _stable_order(record: Mapping) -> tuple:
    image = record["image"]
    return image.get("patient_id") or "", image.get("split") or "", image["content_hash"], record["source"]["name"]


# --- consistency check (cxr fsck) ---------------------------------------------------------------
MISSING = "missing"
STALE = "stale"
DUPLICATED = "duplicated"


@dataclass(frozen=True)
class Finding:
    key: str
    """The source key (or, for an output no record explains and no sidecar names, the output's key)."""
    problem: str
    detail: str


@dataclass(frozen=True, slots=True)
class CheckedRecord:
    """The part of a state record that ``cxr fsck`` compares: about 200 bytes where the decoded record is about
    2 KB, so a check of 200,000 keys does not hold every record (a dataset partition is read whole)."""
    outcome: str | None
    pending: bool
    version_id: str | None
    outputs: tuple[str, ...]


def checked(record: Mapping) -> CheckedRecord:
    """``record`` (as :meth:`StateStore.records` yields it) reduced to what the check reads."""
    return CheckedRecord(record.get("outcome"), bool(record.get("pending")), record["source"].get("version_id"),
                         outputs(record) if record.get("outcome") else ())


def check_dataset(current: Mapping[str, str | None], records: Mapping[str, CheckedRecord], present: Iterable[str],
                  stray_sources: Mapping[str, str | None]) -> list[Finding]:
    """Every raw key whose current state is missing, stale or duplicated.

    ``current``: raw key -> current version id (None when its newest version is a delete marker).
    ``records``: raw key -> its state record, :func:`checked`.
    ``present``: output objects that exist under ``processed/<dataset>/`` and ``quarantine/raw/<dataset>/``.
    ``stray_sources``: for each present output no record owns, the source key it names (None if unknown).
    """
    present = set(present)
    owned_by = defaultdict(list)
    for name, source in stray_sources.items():
        owned_by[source or name].append(name)
    findings = []
    for key in sorted(set(current) | set(records)):
        version, record = current.get(key), records.get(key)
        if record is None:
            unowned = sorted(owned_by.pop(key, []))
            if version is not None or unowned:
                findings.append(Finding(key, MISSING, "no state record" + (
                    f"; outputs without one: {', '.join(unowned)}" if unowned else "")))
            continue
        if record.pending:
            findings.append(Finding(key, STALE, "events not yet handled (an invocation failed or is running)"))
        elif record.outcome == DELETED and version is not None:
            findings.append(Finding(key, STALE, "recorded as deleted, but the key has a current version"))
        elif record.outcome != DELETED and version is None:
            findings.append(Finding(key, STALE, f"recorded as {record.outcome}, but the key is deleted"))
        elif record.outcome != DELETED and record.version_id != version:
            findings.append(Finding(key, STALE, f"recorded for version {record.version_id}, "
                                                f"the current version is {version}"))
        for name in record.outputs:
            if name not in present:
                findings.append(Finding(key, MISSING, f"{name} does not exist"))
    for key, names in sorted(owned_by.items()):
        record = records.get(key)
        has_current = record is not None and any(n in present for n in record.outputs)
        findings.append(Finding(key, DUPLICATED if has_current else STALE, "not current: " + ", ".join(sorted(names))))
    return findings
