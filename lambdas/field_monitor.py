"""FieldMonitor Lambda (a daily EventBridge schedule): the models' figures on the site's patients, as metrics.

``cxr status`` shows the same estimates when someone asks (``lambdas.domain.field_performance``). This function
makes sure someone is told when nobody asks: once a day it reads the review table, estimates each recent model's
sensitivity, specificity and sub-type accuracy from the weighted verdicts, compares them with the figures the
model was measured at (``reports/<run>/metrics.json``, which names its model), logs them and publishes
``FieldMeasuresBelowModelFigure``: how many measures of the models that predicted in the last ``RECENT_DAYS``
have a whole 95 % interval below their model's own (``field_performance``). The monitoring stack's alarm sends the
notification topic a message when it is 1 or more. A model replaced long ago stops counting once it makes no more
predictions, and so stops alarming.

Logs and metrics hold model ids and figures only: no key, file name or patient.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from botocore.exceptions import ClientError

from lambdas import aws, review_queue
from lambdas.domain import field_performance, layout, review, review_tally, threshold_amendment

logger = Logger(service="cxr-field-monitor")
METRICS_NAMESPACE, SERVICE = "CxrServerless", "cxr-field-monitor"
ENV_TABLE, ENV_SAMPLE_RATE, ENV_DATA_BUCKET = "REVIEW_TASKS_TABLE", "REVIEW_SAMPLE_RATE", "DATA_BUCKET"
"""The names infra/wiring.py gives them."""
RECENT_DAYS = 30
"""A model counts while it has review tasks this recent: the serving model, and one just replaced."""
METRIC = "FieldMeasuresBelowModelFigure"


def handler(event: dict, context) -> dict:
    tally = review_tally.Tally(review.parse_sample_rate(os.environ.get(ENV_SAMPLE_RATE)))
    pages = aws.client("dynamodb").get_paginator("scan").paginate(TableName=os.environ[ENV_TABLE],
                                                                   ConsistentRead=True)
    for page in pages:
        for item in page["Items"]:
            tally.add(review_queue.decode(item))
    references, bands = model_figures(os.environ[ENV_DATA_BUCKET])
    estimates = tally.estimates(references, bands)
    since = (datetime.now(UTC) - timedelta(days=RECENT_DAYS)).isoformat()
    recent = {model for model, latest in tally.latest.items() if latest >= since}
    below = {model: found["below_model_figure"] for model, found in estimates.items()
             if model in recent and found["below_model_figure"]}
    for model, found in estimates.items():
        logger.info("field figures", extra={"model_id": model, "recent": model in recent,
                                            "measured_against": model in references, **found})
    count = sum(len(measures) for measures in below.values())
    metrics = EphemeralMetrics(namespace=METRICS_NAMESPACE, service=SERVICE)
    metrics.add_metric(name=METRIC, unit=MetricUnit.Count, value=count)
    metrics.flush_metrics()
    if count:
        logger.warning("figures on the site's patients below the model's own", extra={"below": below})
    return {"models": sorted(estimates), "recent": sorted(recent), "measured_against": sorted(references),
            "below": below, METRIC: count,
            "site_thresholds": {model: {"model": found["threshold"].get("model_threshold"),
                                        "site": found["threshold"]["threshold"]}
                                for model, found in estimates.items() if model in recent}}


def model_figures(bucket: str) -> tuple[dict[str, dict[str, field_performance.Reference]],
                                       dict[str, tuple[float, float]]]:
    """Each model's own figures, by model id, from every run's ``reports/<run>/metrics.json`` (models trained
    before metrics.json named its model are left out: their figures cannot be matched), and for a model served at
    an adopted threshold the band its site's threshold may not leave (``threshold_amendment.bands``)."""
    s3 = aws.client("s3")
    found, bands = {}, {}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=layout.REPORTS, Delimiter="/")
    for page in pages:
        for prefix in page.get("CommonPrefixes", []):
            key = f"{prefix['Prefix']}metrics.json"
            try:
                metrics = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            except ClientError as exc:
                if aws.is_missing(exc):  # a run stopped before its Evaluate step
                    continue
                raise
            if metrics.get("model_id"):
                found[metrics["model_id"]] = field_performance.reference_figures(metrics)
                bands.update(threshold_amendment.bands(metrics))
    return found, bands
