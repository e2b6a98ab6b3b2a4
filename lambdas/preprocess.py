"""Preprocess Lambda: S3 ``raw/`` uploads -> labelled, normalised ``processed/`` PNGs, or quarantine.

Nothing a user uploads is ever lost: the original stays in ``raw/`` and every rejection leaves
``quarantine/<key>.error.json`` with a reason. Bad images are permanent errors (recorded, not
raised, so Lambda does not retry them); AWS throttling and timeouts are raised so it does.
Outputs are content-addressed and written with deterministic tie-breaks, so duplicate and
reordered deliveries converge on the same final state.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source

from lambdas import aws, s3io
from lambdas.domain import imaging, layout
from lambdas.domain.labels import UnlabelledError
from lambdas.domain.settings import Settings
from lambdas.s3io import SourceObject

logger = Logger(service="cxr-preprocess")
metrics = Metrics(namespace="CxrServerless", service="cxr-preprocess")


@metrics.log_metrics
@logger.inject_lambda_context(log_event=False)
@event_source(data_class=S3Event)
def handler(event: S3Event, context) -> dict:
    settings = Settings.from_env()
    outcomes = {"accepted": 0, "rejected": 0, "skipped": 0, "transient": 0}
    for record in event.records:
        source = SourceObject.from_record(record)
        if not record.event_name.startswith("ObjectCreated") or source.key.endswith("/"):
            outcomes["skipped"] += 1
            continue
        try:
            outcomes[process(source, settings)] += 1
        except Exception as exc:
            if not aws.is_transient(exc):
                raise
            outcomes["transient"] += 1
            logger.warning("transient AWS error, the event will be retried", key_ref=source.ref, error=str(exc))
    metrics.add_metric(name="ImagesAccepted", unit=MetricUnit.Count, value=outcomes["accepted"])
    metrics.add_metric(name="ImagesRejected", unit=MetricUnit.Count, value=outcomes["rejected"])
    if outcomes["transient"]:
        # Whole-event retry is safe: finished records rewrite identical content-addressed objects.
        raise aws.TransientError(f"{outcomes['transient']} record(s) hit transient AWS errors")
    return outcomes


def process(source: SourceObject, settings: Settings) -> str:
    """Handle one uploaded object; returns ``accepted``, ``rejected`` or ``skipped``."""
    try:
        dataset, info = layout.parse_raw_key(source.key)
        imaging.check_upload_size(source.size, settings.max_upload_bytes)
        image = imaging.normalise(s3io.download(source.bucket, source.key, source.version_id))
    except imaging.RejectedImage as exc:
        return _quarantine(source, exc.code, exc.message)
    except (layout.KeyLayoutError, UnlabelledError) as exc:
        return _quarantine(source, "unlabelled", str(exc))
    record = {
        "source": source.describe(),
        "dataset": dataset,
        "label": info.label,
        "patient_id": info.patient_id,
        "split": info.split,
        "image_id": image.image_id,
        "content_hash": image.content_hash,
        "processed_key": layout.processed_key(dataset, info.label, image.image_id),
        "stored": {"width": image.width, "height": image.height, "format": "PNG", "mode": "L"},
        "original": {
            "width": image.original_width,
            "height": image.original_height,
            "format": image.original_format,
            "mode": image.original_mode,
        },
    }
    metadata_key = layout.processed_metadata_key(dataset, info.label, image.image_id)
    existing = s3io.read_json(source.bucket, metadata_key)
    if existing is not None and _source_rank(existing["source"]) <= _source_rank(record["source"]):
        logger.info("already processed", key_ref=source.ref, image_id=image.image_id, outcome="duplicate")
        return "accepted"
    s3 = aws.client("s3")
    s3.put_object(Bucket=source.bucket, Key=record["processed_key"], Body=image.png, ContentType="image/png")
    s3io.put_json(source.bucket, metadata_key, record)  # written last: its presence means the PNG is complete
    logger.info("accepted", key_ref=source.ref, label=info.label, image_id=image.image_id, outcome="accepted")
    return "accepted"


def _quarantine(source: SourceObject, code: str, message: str) -> str:
    """Record why an object was rejected; the newest S3 event for a key wins, whatever the delivery order."""
    document = {"source": source.describe(), "reason": code, "message": message}
    if not s3io.put_json_if_newest(source.bucket, layout.quarantine_key(source.key), document, source.sequencer):
        logger.info("older rejection ignored", key_ref=source.ref, reason=code, outcome="rejected")
        return "rejected"
    logger.info("rejected", key_ref=source.ref, reason=code, outcome="rejected")
    return "rejected"


def _source_rank(source: dict) -> tuple[str, str]:
    """Deterministic choice between different uploads with identical pixels: the smallest key wins."""
    return (source["key"], source.get("version_id") or "")
