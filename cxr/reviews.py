"""Verdicts read back from the review table: the CSV export and the model-vs-reviewer agreement.

Agreement compares the model's label at prediction time with each verdict (``lambdas.domain.review.agrees``:
a binary model's ``pneumonia`` agrees with any pneumonia verdict; ``not_assessable`` is left out), per verdict
class, per month (when the verdict was given) and overall. Quality-control tasks (a random sample of
predictions the model did not refer) are reported apart: they estimate the accuracy of what nobody reviews.
Beside the raw agreement, the same pass weighs every verdict by how its task was drawn and estimates each model's
sensitivity, specificity and sub-type accuracy on the site's patients (``lambdas.domain.field_performance``).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Iterator

from cxr import target
from infra import wiring
from lambdas import review_queue
from lambdas.domain import field_performance, review, review_tally

CSV_FIELDS = ("task_id", "reviewer", "verdict", "comment", "reviewed_at", "model_label", "agrees", "confidence",
              "pneumonia_probability", "reason", "status", "model_id", "predicted_at", "content_hash")
"""No key and no file name: keys hold patient identifiers; the content hash finds the image (`cxr audit HASH`)."""


def _predict_environment(deployment: target.Target) -> dict[str, str]:
    function = deployment.function_name(wiring.PREDICT, "Inference")
    return deployment.client("lambda").get_function_configuration(FunctionName=function)["Environment"]["Variables"]


def review_table(deployment: target.Target) -> str:
    """The review table as the predict function's environment names it (CloudFormation names it on AWS)."""
    return _predict_environment(deployment)[wiring.ENV_REVIEW_TASKS_TABLE]


def review_settings(deployment: target.Target) -> tuple[str, float]:
    """The review table and the quality-control sample rate the predict function draws at now (what a task
    older than the recorded rate is taken to have been drawn at)."""
    variables = _predict_environment(deployment)
    return (variables[wiring.ENV_REVIEW_TASKS_TABLE],
            review.parse_sample_rate(variables.get(wiring.ENV_REVIEW_SAMPLE_RATE)))


def items(deployment: target.Target, table: str) -> Iterator[dict]:
    """The table's items as the scan's pages stream past (one page held at a time)."""
    pages = deployment.client("dynamodb").get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
    return (review_queue.decode(item) for page in pages for item in page["Items"])


def verdict_rows(found: Iterable[dict]) -> list[dict]:
    """One row per verdict, with its task's prediction, oldest first."""
    found = list(found)
    tasks = {i["pk"]: i for i in found if i["sk"] == review.TASK_SORT_KEY}
    rows = []
    for item in found:
        if not item["sk"].startswith(review.VERDICT_PREFIX):
            continue
        task = tasks.get(item["pk"], {})
        rows.append({"task_id": item["pk"], "reviewer": item["reviewer"], "verdict": item["verdict"],
                     "comment": item.get("comment", ""), "reviewed_at": item["at"],
                     "model_label": item.get("model_label") or task.get("label"), "agrees": item.get("agrees"),
                     **{name: task.get(name) for name in ("confidence", "pneumonia_probability", "reason", "status",
                                                          "model_id", "predicted_at", "content_hash")}})
    return sorted(rows, key=lambda r: (r["reviewed_at"], r["task_id"], r["reviewer"]))


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_FIELDS})
    return out.getvalue()


def summary(found: Iterable[dict], sample_rate: float = review.DEFAULT_SAMPLE_RATE,
            references: dict[str, dict[str, field_performance.Reference]] | None = None,
            bands: dict[str, tuple[float, float]] | None = None) -> dict:
    """What `cxr status` shows: the queue, the agreement and each model's figures on the site's patients
    (``field``, against ``references[model_id]``: ``field_performance.reference_figures``), from one pass.

    Its memory does not grow with the table: a verdict needs only its own task's reason (quality control or
    not), and a task's item comes right before its verdicts when the scan reads the task's item collection in
    sort-key order ("task" < "verdict#..."). A verdict met anywhere else waits until the end, when every
    quality-control task (a 2 % sample) has been seen; so the figures do not depend on the scan's order. The field
    estimate keeps counters the same way (``review_tally.Tally``).
    """
    statuses: dict[str, int] = defaultdict(int)
    quality_control: set[str] = set()
    tally, waiting, task_pk, task_is_qc = _Tally(), [], None, False
    field = review_tally.Tally(sample_rate)
    for item in found:
        field.add(item)
        if item["sk"] == review.TASK_SORT_KEY:
            statuses[item["status"]] += 1
            task_pk, task_is_qc = item["pk"], item.get("reason") == review.QUALITY_CONTROL
            if task_is_qc:
                quality_control.add(item["pk"])
        elif item["sk"].startswith(review.VERDICT_PREFIX):
            if item["pk"] == task_pk:
                tally.add(item, task_is_qc)
            else:
                waiting.append((item["pk"], item["verdict"], item["at"], item.get("agrees")))
    for pk, verdict, at, agrees in waiting:
        tally.add({"verdict": verdict, "at": at, "agrees": agrees}, pk in quality_control)
    return {"tasks": dict(sorted(statuses.items())), "verdicts": tally.verdicts, "agreement": tally.agreement(),
            "field": field.estimates(references, bands)}


class _Tally:
    """Model vs reviewer: overall, per verdict class, per month (when the verdict was given), and for the
    quality-control sample alone; verdicts without an agreement (``not_assessable``) only counted."""

    def __init__(self):
        self.verdicts, self.not_assessable = 0, 0
        self.overall, self.quality_control = [0, 0], [0, 0]
        self.by_class: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.by_month: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def add(self, verdict: dict, quality_control: bool) -> None:
        self.verdicts += 1
        self.not_assessable += verdict["verdict"] == review.NOT_ASSESSABLE
        if verdict.get("agrees") is None:
            return
        agree = int(bool(verdict["agrees"]))
        counters = [self.overall, self.by_class[verdict["verdict"]], self.by_month[verdict["at"][:7]]]
        for counter in counters + ([self.quality_control] if quality_control else []):
            counter[0] += 1
            counter[1] += agree

    def agreement(self) -> dict:
        def rate(counter: list[int]) -> dict:
            n, agree = counter
            return {"n": n, "agree": agree, "rate": round(agree / n, 4) if n else None}

        return {"overall": rate(self.overall),
                "per_class": {name: rate(self.by_class[name]) for name in review.VERDICTS if name in self.by_class},
                "per_month": {month: rate(self.by_month[month]) for month in sorted(self.by_month)},
                "quality_control": rate(self.quality_control), "not_assessable": self.not_assessable}
