"""A site's threshold adopted (``lambdas.domain.threshold_amendment``): its benchmark answers, names and metadata."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxr import jobcode
from lambdas.domain import field_performance, promotion, threshold_amendment

benchmark, decision = (jobcode.load(name) for name in ("benchmark", "decision"))
CLASSES = ["bacterial", "normal", "viral"]
SETTINGS = settings(max_examples=200, derandomize=True, deadline=None, database=None)


def records(n: int) -> list[dict]:
    return [{"content_hash": f"{i:064x}", "label": CLASSES[i % 3], "patient_id": f"p{i // 2}",
             "benchmark_version": "v1"} for i in range(n)]


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), threshold=st.floats(0.01, 0.99))
def test_at_the_models_own_threshold_the_answers_are_the_models_own(seed, n, threshold):
    """``answers_at`` calls pneumonia as ``decision.predict`` does: at the threshold the training job answered
    with, it reproduces every call the job wrote into ``benchmark.json``."""
    probs = np.random.default_rng(seed).dirichlet(np.ones(3) * 0.5, size=n)
    written = benchmark.answers(records(n), probs, CLASSES, decision.Rule(threshold))
    again = threshold_amendment.answers_at(written, threshold)
    near = [abs(r["score"] - threshold) < 1e-6 for r in written["records"]]  # scores are rounded to 6 places
    assert [r["called"] for r, close in zip(again["records"], near, strict=True) if not close] == [
        r["called"] for r, close in zip(written["records"], near, strict=True) if not close]
    assert again["version"] == written["version"] and again["threshold"] == threshold
    assert all("referred" not in r for r in again["records"])


def test_a_higher_threshold_calls_fewer_pneumonias_and_keeps_everything_else():
    answers = {"version": "v1", "records": [
        {"content_hash": "a", "patient": "p", "truth": True, "score": 0.65, "called": True, "referred": True},
        {"content_hash": "b", "patient": "q", "truth": False, "score": 0.55, "called": True, "referred": True},
        {"content_hash": "c", "patient": "q", "truth": False, "score": 0.2, "called": False, "referred": False}]}
    amended = threshold_amendment.answers_at(answers, 0.6)
    assert [r["called"] for r in amended["records"]] == [True, False, False]
    assert [r["score"] for r in amended["records"]] == [0.65, 0.55, 0.2]
    assert answers["records"][1]["called"] is True  # the trained package's answers are not touched


@pytest.mark.parametrize(("threshold", "fits"), [(0.5, False), (0.5004, False), (0.501, True), (0.2, True),
                                                 (0.8, True), (0.19, False), (0.81, False), (float("nan"), False),
                                                 (0.0, False)])
def test_only_thresholds_inside_the_recorded_band_other_than_its_own_are_adopted(threshold, fits):
    rule = decision.Rule(0.5).describe()  # band [0.2, 0.8]
    if fits:
        assert threshold_amendment.check(threshold, rule) == threshold
    else:
        with pytest.raises(threshold_amendment.NotAdoptable):
            threshold_amendment.check(threshold, rule)


def test_a_model_without_a_threshold_has_none_to_replace():
    with pytest.raises(threshold_amendment.NotAdoptable, match="no binary threshold"):
        threshold_amendment.check(0.5, decision.Rule(None).describe())


def test_a_model_trained_before_its_handler_read_the_variable_is_refused():
    """Its handler would ignore the variable: the endpoint would answer at the model's own threshold while the
    registry and `cxr status` said the adopted one served."""
    older = {k: v for k, v in decision.Rule(0.5).describe().items() if k != "threshold_variable"}
    with pytest.raises(threshold_amendment.NotAdoptable, match="train it again"):
        threshold_amendment.check(0.6, older)
    assert threshold_amendment.check(0.6, {**older, "threshold_variable": decision.THRESHOLD_VARIABLE}) == 0.6


def test_names_carry_the_threshold_and_fit_sagemakers_limits():
    job = "cxr-production-0-" + "f" * 36 + "-long"
    name = threshold_amendment.model_name(job, 0.705)
    assert len(name) == threshold_amendment.MAX_MODEL_NAME and name.endswith("-t705")
    assert name.startswith("cxr-production-0-")  # the stage's prefix, which the deploy role's policy names
    assert threshold_amendment.model_name("cxr-dev-0-abc", 0.07) == "cxr-dev-0-abc-t070"
    assert threshold_amendment.run_id("run-7", 0.7) == "run-7-threshold-700"


def test_the_metadata_is_the_trained_packages_with_what_it_amends():
    base = {promotion.RUN_ID: "run-7", promotion.TRAINING_JOB: "cxr-dev-0-abc", promotion.APPROVED_AT: "2026",
            promotion.DECISION: "not-worse", promotion.BENCHMARK_ANSWERS: "s3://b/reports/run-7/benchmark.json",
            promotion.ARTIFACT_SHA256: "ab" * 32, promotion.REPORT: "s3://b/reports/run-7/"}
    meta = threshold_amendment.metadata(base, 0.7, 0.5, "s3://b/reports/run-7-threshold-700/", None)
    assert meta[promotion.RUN_ID] == "run-7-threshold-700" and meta[threshold_amendment.AMENDS] == "run-7"
    assert meta[promotion.ARTIFACT_SHA256] == base[promotion.ARTIFACT_SHA256]  # the same bytes serve
    assert promotion.APPROVED_AT not in meta and promotion.BENCHMARK_ANSWERS not in meta
    assert (meta[threshold_amendment.THRESHOLD], meta[threshold_amendment.MODEL_THRESHOLD]) == ("0.700", "0.5")
    assert meta[threshold_amendment.MODEL_NAME] == "cxr-dev-0-abc-t700"
    assert meta[promotion.DECISION] == threshold_amendment.DECISION and not promotion.metadata_problems(meta)


def test_its_figures_count_the_calls_at_its_threshold_under_the_id_its_answers_give():
    answers = {"version": "v1", "records": [
        {"content_hash": h, "patient": h, "truth": truth, "score": score, "called": score >= 0.5}
        for h, truth, score in (("a", True, 0.9), ("b", True, 0.6), ("c", False, 0.65), ("d", False, 0.1))]}
    measured = threshold_amendment.figures(threshold_amendment.answers_at(answers, 0.7), "m-1", 0.7,
                                           decision.Rule(0.5).describe())
    assert measured["model_id"] == "m-1-t700" and measured["threshold"] == 0.7 and measured["model_threshold"] == 0.5
    assert threshold_amendment.bands(measured) == {"m-1-t700": pytest.approx((0.2, 0.8))}
    assert threshold_amendment.bands({"model_id": "m-1", "binary": {}}) == {}  # a trained model's: no limit
    assert measured["binary"]["confusion_matrix"] == [[2, 0], [1, 1]]  # rows truth normal, pneumonia
    assert (measured["binary"]["sensitivity"], measured["binary"]["specificity"]) == (0.5, 1.0)
    references = field_performance.reference_figures(measured)  # what cxr status and the FieldMonitor read
    assert references["sensitivity"].cases == 2 and references["specificity"].figure == 1.0
