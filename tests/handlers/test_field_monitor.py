"""The daily field monitor on moto: it reads the review table and the runs' metrics.json, and counts, for the models
still predicting, the measures whose figures on the site's patients fall below the model's own."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from simulated_site import population, review_items, scored_population, scored_review_items

import reviewing
from infra import wiring
from lambdas import aws, field_monitor, review_queue
from lambdas.domain import threshold_amendment

TABLE = "field-tasks"


@pytest.fixture
def deployed(data_bucket, monkeypatch):
    table = reviewing.create_review_table(TABLE)
    for name, value in {wiring.ENV_REVIEW_TASKS_TABLE: table, wiring.ENV_REVIEW_SAMPLE_RATE: "0.02",
                        wiring.ENV_DATA_BUCKET: data_bucket}.items():
        monkeypatch.setenv(name, value)
    return table, data_bucket


def put(table: str, items: list[dict]) -> None:
    for item in items:
        aws.client("dynamodb").put_item(TableName=table, Item=review_queue.encode(item))


def publish_metrics(bucket: str, run: str, metrics: dict) -> None:
    boto3.client("s3").put_object(Bucket=bucket, Key=f"reports/{run}/metrics.json", Body=json.dumps(metrics).encode())


def emitted(capsys) -> list[float]:
    """The metric's values in the EMF lines the handler printed."""
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    return [value for line in lines if field_monitor.METRIC in line for value in line[field_monitor.METRIC]]


def test_a_recent_model_below_its_own_figure_is_counted_an_old_one_is_not(deployed, capsys):
    table, bucket = deployed
    now = datetime.now(UTC)
    recent, old = ((now - timedelta(days=d)).isoformat(timespec="milliseconds") for d in (1, 90))
    # the serving model: specificity 0.985 where it was measured, about 0.7 on this site's patients
    put(table, review_items(population(3_000, specificity=0.7, seed=1), rate=0.2, model_id="serving",
                            created_at=recent))
    # a model replaced long ago, just as poor here: it no longer predicts, so it no longer alarms
    put(table, review_items(population(3_000, specificity=0.7, seed=2), rate=0.2, model_id="retired",
                            created_at=old))
    figures = {"binary": {"sensitivity": 0.94, "specificity": 0.985}}  # the site's sensitivity is about 0.95
    publish_metrics(bucket, "run-2", {"model_id": "serving", **figures})
    publish_metrics(bucket, "run-1", {"model_id": "retired", **figures})
    publish_metrics(bucket, "run-0", {"accuracy": 0.9})  # before metrics.json named its model
    boto3.client("s3").put_object(Bucket=bucket, Key="reports/stopped-run/gate.json", Body=b"{}")  # no metrics.json

    result = field_monitor.handler({"source": "aws.events", "detail-type": "Scheduled Event"}, None)

    assert result["models"] == ["retired", "serving"] and result["recent"] == ["serving"]
    assert result["measured_against"] == ["retired", "serving"]
    assert result["below"] == {"serving": ["specificity"]} and result[field_monitor.METRIC] == 1
    assert emitted(capsys) == [1]


def test_a_model_that_holds_up_or_has_no_figures_raises_nothing(deployed, capsys):
    table, bucket = deployed
    recent = datetime.now(UTC).isoformat(timespec="milliseconds")
    put(table, review_items(population(3_000, specificity=0.97, seed=3), rate=0.2, model_id="fine",
                            created_at=recent))
    put(table, review_items(population(3_000, specificity=0.5, seed=4), rate=0.2, model_id="unmatched",
                            created_at=recent))
    publish_metrics(bucket, "run-1", {"model_id": "fine", "binary": {"sensitivity": 0.9, "specificity": 0.97}})
    result = field_monitor.handler({}, None)
    assert result["below"] == {} and result[field_monitor.METRIC] == 0 and emitted(capsys) == [0]
    assert result["measured_against"] == ["fine"]  # "unmatched" has estimates but nothing to compare them with


def test_the_threshold_a_recent_models_site_calls_for_is_reported(deployed):
    """The official test's failure in small: normals scored high at the model's 0.2. The monitor reports the higher
    threshold the verdicts allow inside the referral band; a model whose tasks record no threshold gets none."""
    table, _ = deployed
    recent = datetime.now(UTC).isoformat(timespec="milliseconds")
    site = scored_population(8_000, threshold=0.2, margin=math.log(4), seed=3)
    put(table, scored_review_items(site, rate=0.02, model_id="serving", created_at=recent))
    put(table, review_items(population(3_000, specificity=0.97, seed=3), rate=0.2, model_id="bare",
                            created_at=recent))
    result = field_monitor.handler({}, None)
    assert result["site_thresholds"]["bare"] == {"model": None, "site": None}
    fitted = result["site_thresholds"]["serving"]
    assert fitted["model"] == 0.2 and site["band"][0] < 0.2 < fitted["site"] < site["band"][1]

    # served at an adopted threshold, its amendment's metrics.json bounds the next move by the model's own band
    publish_metrics(deployed[1], "run-1-threshold-200", {"model_id": "serving", "binary": {},
                                                    threshold_amendment.MODEL_BAND: [0.1, 0.24]})
    held = field_monitor.handler({}, None)["site_thresholds"]["serving"]
    assert 0.2 < held["site"] <= 0.24 < fitted["site"]
