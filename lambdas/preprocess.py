"""Preprocess Lambda: S3 ``raw/`` events -> one current outcome per key: a processed image, quarantine, or deleted.

Any event for a key (created or removed, in any order, delivered any number of times) means
"derive this key again from its current version"; the rules and why are in
:mod:`lambdas.domain.source_state`. A processed key owns ``processed/<dataset>/<label>/<id>.png``
and its ``.json`` sidecar; a rejected one owns ``quarantine/raw/<dataset>/<name>.error.json`` with the
reason; a deleted one owns nothing. Outputs and records name an upload by its opaque name, never its key
(:mod:`lambdas.domain.source_names`). Outputs of an older outcome are tombstoned; the original stays in
``raw/``. Bad images are recorded, not raised (no retry); AWS throttling and timeouts are raised
so that Lambda retries the event.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source

from lambdas import aws, pseudonyms, s3io
from lambdas.domain import deid, imaging, layout, review, source_names, source_state, uploads
from lambdas.domain.labels import UnlabelledError
from lambdas.domain.settings import Settings
from lambdas.domain.source_state import Claim
from lambdas.s3io import SourceObject
from lambdas.state_store import SourceRef, StateStore, handle, reconcile

logger = Logger(service="cxr-preprocess")
METRICS_NAMESPACE, SERVICE = "CxrServerless", "cxr-preprocess"

COUNTED = {source_state.PROCESSED: "accepted", source_state.QUARANTINED: "rejected",
           source_state.DELETED: "removed"}
"""Outcome kind -> the handler's count (and metric) for it."""
METRICS = {"accepted": "ImagesAccepted", "rejected": "ImagesRejected", "removed": "ImagesRemoved",
           source_state.DUPLICATE: "DuplicateEvents", source_state.SUPERSEDED: "SupersededEvents"}


@logger.inject_lambda_context(log_event=False)
@event_source(data_class=S3Event)
def handler(event: S3Event, context) -> dict:
    settings = Settings.from_env()
    settings.require("source_state_table")
    ingest = Ingest(StateStore(settings.source_state_table), settings, context)
    outcomes = dict.fromkeys(("accepted", "rejected", "removed", source_state.DUPLICATE, source_state.SUPERSEDED,
                              source_state.DEFERRED, "skipped", "transient"), 0)
    for record in event.records:
        source = SourceObject.from_record(record)
        if not record.event_name.startswith(("ObjectCreated", "ObjectRemoved")) or not source.key.startswith(
                layout.RAW) or source.key.endswith("/") or source_names.is_pointer(source.key):
            outcomes["skipped"] += 1
            continue
        name = None  # until the secret is read: a transient error may come before it
        try:
            name = pseudonyms.source_name(settings, source.bucket, source.key)
            outcomes[ingest.handle(SourceRef(source.bucket, source.key, name), source.sequencer)] += 1
        except Exception as exc:
            if not aws.is_transient(exc):
                raise
            outcomes["transient"] += 1
            logger.warning("transient AWS error, the event will be retried", source=name, error=str(exc))
    _publish(outcomes)
    if outcomes["transient"]:
        # Whole-event retry is safe: finished records count as duplicates and do no work.
        raise aws.TransientError(f"{outcomes['transient']} record(s) hit transient AWS errors")
    return outcomes


def _publish(outcomes: dict) -> None:
    """The invocation's counts as one EMF document, from a metric set of its own (the handler is reentrant)."""
    metrics = EphemeralMetrics(namespace=METRICS_NAMESPACE, service=SERVICE)
    for name, metric in METRICS.items():
        metrics.add_metric(name=metric, unit=MetricUnit.Count, value=outcomes[name])
    metrics.flush_metrics()


class Ingest:
    """One invocation's view of the state table and settings."""

    def __init__(self, store: StateStore, settings: Settings, context):
        self.store, self.settings, self.context = store, settings, context

    def handle(self, ref: SourceRef, sequencer: str) -> str:
        """One event: its count (``accepted``, ``rejected``, ``removed``, duplicate, superseded or deferred)."""
        outcome = handle(self.store, ref, sequencer, self.derive, self.context)
        if outcome not in COUNTED:
            logger.info("no new work", source=ref.name, outcome=outcome)
        return COUNTED.get(outcome, outcome)

    def derive(self, ref: SourceRef, previous: dict | None) -> dict:
        """The key's outcome from its current version; writes what it owns and retires what it no longer owns."""
        current = s3io.current_object(ref.bucket, ref.key)
        if current is None:
            record, png = _deleted(ref), None
        else:
            try:
                record, png = _examine(ref, current, self.settings)
            finally:
                current.close()
        record, peers = self._settle_claims(ref, previous, record)
        if record["outcome"] == source_state.PROCESSED:
            s3io.put_png(ref.bucket, record["image"]["processed_key"], png)
            s3io.put_json(ref.bucket, record["image"]["metadata_key"], source_state.sidecar(record))  # after the PNG
        elif record["outcome"] == source_state.QUARANTINED:
            s3io.put_json(ref.bucket, source_state.outputs(record)[0], source_state.error_document(record))
        if previous is not None:
            for name in set(source_state.outputs(previous)) - set(source_state.outputs(record)):
                s3io.tombstone(ref.bucket, name)
        for peer in sorted(peers):  # identical pixels elsewhere: their outcome may have changed with ours
            peer_key = s3io.pointed_key(ref.bucket, ref.key, peer)
            if peer_key is None:  # written before its claim, so never missing unless removed by hand
                logger.warning("a claim's pointer is missing", peer=peer)
                continue
            peer_ref = SourceRef(ref.bucket, peer_key, peer)
            self.store.nudge(peer_ref)
            reconcile(self.store, peer_ref, self.derive, self.context)
        logger.info(record["outcome"], source=ref.name, outcome=record["outcome"],
                    reason=record.get("reason"))
        return record

    def _settle_claims(self, ref: SourceRef, previous: dict | None, record: dict) -> tuple[dict, set[str]]:
        """Register the record's pixels, withdraw its older claim; quarantine it if labels disagree.

        Returns the record (quarantined as ``conflicting_labels`` when so decided) and the keys to nudge.
        """
        old, new = (previous or {}).get("claim"), record.get("claim")
        peers: set[str] = set()
        if old and old != new:
            peers |= set(self.store.unclaim(ref, old["content_hash"]))
        if not new:
            return record, peers
        if not old:  # a claim names the key, and a peer re-derives it: its pointer must exist first
            s3io.put_pointer(ref.bucket, ref.key, ref.name)
        claims = self.store.claim(ref, new["content_hash"], Claim(new["label"], new["authority"]))
        if old != new:
            peers |= set(claims) - {ref.name}
        verdict = source_state.resolve_group(claims)[ref.name]
        if not verdict.trains:
            record = {**record, "outcome": source_state.QUARANTINED, "reason": verdict.reason,
                      "message": verdict.message(new["label"]), "conflicts_with": list(verdict.others)}
        return record, peers


def _deleted(ref: SourceRef) -> dict:
    return {"outcome": source_state.DELETED, "source": _source(ref, None, 0)}


def _source(ref: SourceRef, version_id: str | None, size: int) -> dict:
    """What records and outputs say of their upload: its name, never its key."""
    return {"bucket": ref.bucket, "name": ref.name, "scope": source_state.scope(ref.key), "version_id": version_id,
            "size": size}


def _examine(ref: SourceRef, current: s3io.CurrentObject, settings: Settings) -> tuple[dict, bytes | None]:
    """Processed or quarantined, for the key's current version; the PNG when processed."""
    source = _source(ref, current.version_id, current.size)
    try:
        dataset, info = layout.parse_raw_key(ref.key)
        imaging.check_upload_size(current.size, settings.max_upload_bytes)
        image, data_set = uploads.normalise(current.read())
    except imaging.RejectedImage as exc:
        return _quarantined(source, exc.code, exc.message), None
    except (layout.KeyLayoutError, UnlabelledError) as exc:
        return _quarantined(source, "unlabelled", str(exc)), None
    described = deid.facts(data_set, pseudonyms.key(settings)) if data_set is not None else None
    declared = current.metadata.get(layout.PATIENT_METADATA, "")
    authority = source_state.REVIEW if current.metadata.get(source_state.REVIEW_METADATA) else source_state.FOLDER
    # a reviewed copy is named by content hash: the id its original's name gave travels as metadata (review_data)
    named = current.metadata.get(review.PATIENT_METADATA) if authority == source_state.REVIEW else None
    patient = (deid.pseudonymous_patient_id(pseudonyms.key(settings), declared) if declared.strip() else
               described["patient_id"] if described else named or info.patient_id)
    image_id = source_state.output_id(ref.name, image.content_hash)
    record = {
        "outcome": source_state.PROCESSED,
        "source": source,
        "image": {
            "dataset": dataset,
            "label": info.label,
            "patient_id": patient,
            "split": info.split,
            "image_id": image_id,
            "content_hash": image.content_hash,
            "processed_key": layout.processed_key(dataset, info.label, image_id),
            "metadata_key": layout.processed_metadata_key(dataset, info.label, image_id),
            "stored": {"width": image.width, "height": image.height, "format": "PNG", "mode": "L"},
            "original": {"width": image.original_width, "height": image.original_height,
                         "format": image.original_format, "mode": image.original_mode},
            **({"dicom": described} if described else {}),
        },
        "claim": {"content_hash": image.content_hash, "label": info.label, "authority": authority},
    }
    return record, image.png


def _quarantined(source: dict, code: str, message: str) -> dict:
    return {"outcome": source_state.QUARANTINED, "source": source, "reason": code, "message": message}
