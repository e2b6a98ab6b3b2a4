"""Verdicts read back from the review table: the CSV export and the model-vs-reviewer agreement.

Agreement compares the model's label at prediction time with each verdict (``lambdas.domain.review.agrees``:
a binary model's ``pneumonia`` agrees with any pneumonia verdict; ``not_assessable`` is left out), per verdict
class, per month (when the verdict was given) and overall. Quality-control tasks (a random sample of
predictions the model did not refer) are reported apart: they estimate the accuracy of what nobody reviews.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable

from cxr import target
from infra import wiring
from lambdas import review_queue
from lambdas.domain import review

CSV_FIELDS = ("task_id", "reviewer", "verdict", "comment", "reviewed_at", "model_label", "agrees", "confidence",
              "pneumonia_probability", "reason", "status", "model_id", "predicted_at", "content_hash")
"""No key and no file name: keys hold patient identifiers; the content hash finds the image (`cxr audit HASH`)."""


def review_table(deployment: target.Target) -> str:
    """The review table as the predict function's environment names it (CloudFormation names it on AWS)."""
    function = deployment.function_name(wiring.PREDICT, "Inference")
    variables = deployment.client("lambda").get_function_configuration(FunctionName=function)["Environment"][
        "Variables"]
    return variables[wiring.ENV_REVIEW_TASKS_TABLE]


def items(deployment: target.Target, table: str) -> list[dict]:
    pages = deployment.client("dynamodb").get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
    return [review_queue.decode(item) for page in pages for item in page["Items"]]


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


def _rate(pairs: list[bool]) -> dict:
    return {"n": len(pairs), "agree": sum(pairs), "rate": round(sum(pairs) / len(pairs), 4) if pairs else None}


def agreement(rows: list[dict]) -> dict:
    """Model vs reviewer: overall, per verdict class, per month, and for the quality-control sample alone."""
    judged = [r for r in rows if r["agrees"] is not None]
    by_class, by_month = defaultdict(list), defaultdict(list)
    for row in judged:
        by_class[row["verdict"]].append(bool(row["agrees"]))
        by_month[row["reviewed_at"][:7]].append(bool(row["agrees"]))
    return {"overall": _rate([bool(r["agrees"]) for r in judged]),
            "per_class": {name: _rate(by_class[name]) for name in review.VERDICTS if by_class[name]},
            "per_month": {month: _rate(by_month[month]) for month in sorted(by_month)},
            "quality_control": _rate([bool(r["agrees"]) for r in judged if r["reason"] == review.QUALITY_CONTROL]),
            "not_assessable": sum(r["verdict"] == review.NOT_ASSESSABLE for r in rows)}


def summary(found: list[dict]) -> dict:
    """What `cxr status` shows: the queue and the agreement."""
    tasks = [i for i in found if i["sk"] == review.TASK_SORT_KEY]
    statuses = defaultdict(int)
    for task in tasks:
        statuses[task["status"]] += 1
    rows = verdict_rows(found)
    return {"tasks": dict(sorted(statuses.items())), "verdicts": len(rows), "agreement": agreement(rows)}
