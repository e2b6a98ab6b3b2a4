"""Verdicts as CSV and model-vs-reviewer agreement (`cxr review export`, `cxr status`), and the verdict mapping."""

from __future__ import annotations

import csv
import io
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxr import reviews
from lambdas.domain import review


def task(pk: str, label: str, reason: str = review.REFERRED, status: str = review.REVIEWED) -> dict:
    return {"pk": pk, "sk": "task", "label": label, "reason": reason, "status": status, "confidence": 0.6,
            "name": "s-0123456789abcdef0123456789abcdef", "content_hash": "ab" * 32, "model_id": "m"}


def verdict(pk: str, reviewer: str, value: str, model_label: str, at: str) -> dict:
    return {"pk": pk, "sk": f"verdict#{reviewer}", "reviewer": reviewer, "verdict": value, "at": at,
            "comment": "ok, \"quoted\"", "model_label": model_label, "agrees": review.agrees(model_label, value)}


ITEMS = [
    task("t1", "viral"), verdict("t1", "r1", "bacterial", "viral", "2026-10-03T10:00:00"),
    task("t2", "normal"), verdict("t2", "r1", "normal", "normal", "2026-11-02T10:00:00"),
    task("t3", "pneumonia", reason=review.QUALITY_CONTROL), verdict("t3", "r2", "viral", "pneumonia",
                                                                    "2026-11-05T10:00:00"),
    task("t4", "normal"), verdict("t4", "r2", "not_assessable", "normal", "2026-11-06T10:00:00"),
    task("t5", "viral", status=review.OPEN), {"pk": "t5", "sk": "view#2026-11-07#r1", "reviewer": "r1"},
]


def test_agreement_per_class_month_and_quality_control_sample():
    summary = reviews.summary(ITEMS)
    assert summary["tasks"] == {"open": 1, "reviewed": 4} and summary["verdicts"] == 4
    agreement = summary["agreement"]
    assert agreement["overall"] == {"n": 3, "agree": 2, "rate": 0.6667}  # not assessable left out
    assert agreement["per_class"] == {"normal": {"n": 1, "agree": 1, "rate": 1.0},
                                      "bacterial": {"n": 1, "agree": 0, "rate": 0.0},
                                      "viral": {"n": 1, "agree": 1, "rate": 1.0}}  # binary pneumonia agrees
    assert list(agreement["per_month"]) == ["2026-10", "2026-11"]
    assert agreement["quality_control"] == {"n": 1, "agree": 1, "rate": 1.0} and agreement["not_assessable"] == 1


@settings(max_examples=50, deadline=None)
@given(st.permutations(ITEMS))
def test_the_summary_does_not_depend_on_the_scans_order(items):
    """A verdict read apart from its task (or before it) still counts, quality control included."""
    assert reviews.summary(iter(items)) == reviews.summary(ITEMS)


def test_the_summary_holds_no_rows_while_the_scan_streams():
    """`cxr status` over a large review table holds counters, not rows."""
    def table(n: int):
        for i in range(n):
            yield task(f"t{i}", "viral", reason=review.QUALITY_CONTROL if i % 50 == 0 else review.REFERRED)
            yield verdict(f"t{i}", "r1", "bacterial" if i % 3 else "viral", "viral", f"2026-{1 + i % 12:02d}-03T10:00")

    def peak(n: int) -> int:
        tracemalloc.start()
        summary = reviews.summary(table(n))
        size = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert summary["verdicts"] == n and summary["agreement"]["quality_control"]["n"] == n // 50
        return size

    # only the quality-control tasks' ids and a few counters are kept: memory grows by under 10 bytes for each of
    # the 36,000 more items read, where holding the decoded rows took hundreds (the field estimate's bootstrap costs
    # the same few hundred kilobytes at any size, so the growth is what is measured)
    peak(100)  # imports and first-call caches
    assert peak(20_000) - peak(2_000) < 10 * 36_000


def test_the_csv_has_every_verdict_and_no_key():
    text = reviews.to_csv(reviews.verdict_rows(ITEMS))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["task_id"], r["verdict"], r["agrees"]) for r in rows] == [
        ("t1", "bacterial", "False"), ("t2", "normal", "True"), ("t3", "viral", "True"), ("t4", "not_assessable", "")]
    assert rows[0]["comment"] == 'ok, "quoted"' and rows[0]["content_hash"] == "ab" * 32
    assert "person9" not in text and "incoming/" not in text


@pytest.mark.parametrize(("verdict_", "classes", "folder"), [
    ("normal", ["bacterial", "normal", "viral"], "NORMAL"),
    ("viral", ["normal", "pneumonia"], "VIRAL"),
    ("pneumonia_unspecified", ["normal", "pneumonia"], "PNEUMONIA"),
    ("pneumonia_unspecified", ["bacterial", "normal", "viral"], None),
    ("not_assessable", ["normal", "pneumonia"], None),
])
def test_training_folders(verdict_, classes, folder):
    assert review.training_folder(verdict_, classes) == folder


def test_an_unknown_verdict_has_no_folder():
    with pytest.raises(ValueError):
        review.training_folder("maybe", ["normal"])
