"""The champion/challenger paired bootstrap (lambdas.domain.champion): unit cases and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lambdas.domain import champion

SETTINGS = settings(max_examples=150, derandomize=True, deadline=None, database=None, print_blob=True)


def records(truth, score, called, patients) -> list[dict]:
    return [{"content_hash": f"h{i:05d}", "patient": str(p), "truth": bool(t), "score": float(s), "called": bool(c)}
            for i, (t, s, c, p) in enumerate(zip(truth, score, called, patients, strict=True))]


def benchmark(n_patients: int, images_per_patient: int, seed: int = 0):
    """A model that is right about 90 % of the time on a balanced set, grouped by patient."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n_patients), images_per_patient)
    truth = np.repeat(rng.random(n_patients) < 0.5, images_per_patient)
    score = np.clip(np.where(truth, 0.75, 0.25) + rng.normal(0, 0.2, len(truth)), 0, 1)
    return truth, score, score >= 0.5, patients


def test_identical_models_pass_with_a_zero_interval():
    truth, score, called, patients = benchmark(60, 3)
    same = records(truth, score, called, patients)
    result = champion.compare(champion.pair(same, same), resamples=300)
    assert result["passed"] and result["patients"] == 60 and result["images"] == 180
    for name in champion.METRICS:
        assert result["metrics"][name]["difference"] == 0 and result["metrics"][name]["interval"] == [0, 0]


def test_a_degraded_challenger_is_rejected_with_its_statistics():
    truth, score, called, patients = benchmark(150, 2)
    worse_called = np.where(np.arange(len(truth)) % 3 == 0, ~truth, called)  # a third of the images wrong
    worse_score = np.where(np.arange(len(truth)) % 3 == 0, 1 - truth, score)
    result = champion.compare(champion.pair(records(truth, score, called, patients),
                                            records(truth, worse_score, worse_called, patients)), resamples=500)
    assert not result["passed"]
    accuracy = result["metrics"]["accuracy"]
    assert accuracy["difference"] < -0.1 and accuracy["interval"][1] < 0 and not accuracy["passed"]
    assert any(f.startswith("accuracy:") for f in result["failures"])


def test_pairs_by_content_hash_and_drops_images_one_model_lacks():
    truth, score, called, patients = benchmark(10, 2)
    theirs = records(truth, score, called, patients)
    result = champion.pair(theirs, list(reversed(theirs[2:])))
    assert len(result.truth) == 18 and result.patients == 9
    np.testing.assert_array_equal(result.champion.score, result.challenger.score)


def test_records_that_disagree_on_the_truth_are_refused():
    truth, score, called, patients = benchmark(4, 1)
    ours = records(truth, score, called, patients)
    theirs = [{**r, "truth": not r["truth"]} for r in ours]
    with pytest.raises(ValueError, match="disagree on the truth"):
        champion.pair(theirs, ours)


def test_weighted_auc_matches_the_pairwise_definition_with_ties():
    truth = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    score = np.array([0.9, 0.4, 0.4, 0.1, 0.6, 0.7])
    weights = np.array([[1, 2, 1, 0, 3, 1], [1, 1, 1, 1, 1, 1]], dtype=float)
    got = champion.metrics(truth, champion.Answers(score, score >= 0.5), weights)["roc_auc"]
    for row, value in zip(weights, got, strict=True):
        num = sum(row[i] * row[j] * (1.0 if score[i] > score[j] else 0.5 if score[i] == score[j] else 0.0)
                  for i in np.flatnonzero(truth) for j in np.flatnonzero(~truth))
        assert value == pytest.approx(num / (row[truth].sum() * row[~truth].sum()))


def test_a_benchmark_of_one_class_is_not_measurable_on_auc_but_not_rejected():
    same = records([True] * 6, [0.9] * 6, [True] * 6, range(6))
    result = champion.compare(champion.pair(same, same), resamples=50)
    assert result["passed"] and not result["metrics"]["roc_auc"]["measurable"]


@st.composite
def benchmark_sets(draw):
    n = draw(st.integers(1, 40))
    patients = draw(st.lists(st.integers(0, max(0, n // 2)), min_size=n, max_size=n))
    truth = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    score = draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
    threshold = draw(st.floats(0.01, 0.99))
    return truth, score, [s >= threshold for s in score], patients


@SETTINGS
@given(benchmark_sets(), st.floats(0, 0.2), st.integers(0, 2**32 - 1))
def test_identical_models_are_never_rejected(data, margin, seed):
    same = records(*data)
    result = champion.compare(champion.pair(same, same), margin=margin, resamples=200, seed=seed)
    assert result["passed"], result["failures"]


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.floats(0.25, 0.6))
def test_a_strictly_degraded_model_is_rejected_at_sufficient_n(seed, share):
    """Flipping ``share`` of the champion's right answers to wrong ones is always caught on 200 patients."""
    truth, score, called, patients = benchmark(200, 2, seed=seed % 1000)
    rng = np.random.default_rng(seed)
    flip = (called == truth) & (rng.random(len(truth)) < share)
    worse = records(truth, np.where(flip, 1.0 - truth, score), np.where(flip, ~truth, called), patients)
    result = champion.compare(champion.pair(records(truth, score, called, patients), worse), resamples=300, seed=seed)
    assert not result["passed"] and not result["metrics"]["accuracy"]["passed"]


@SETTINGS
@given(benchmark_sets(), st.integers(0, 2**32 - 1))
def test_the_interval_holds_the_observed_difference_for_accuracy(data, seed):
    """The observed difference lies within the bootstrap range (percentiles 0 and 100) of every metric."""
    truth, score, called, patients = data
    other = records(truth, score, [not c for c in called], patients)
    result = champion.compare(champion.pair(records(*data), other), resamples=200, seed=seed, confidence=0.999999)
    accuracy = result["metrics"]["accuracy"]
    assert accuracy["interval"][0] - 1e-9 <= accuracy["difference"] <= accuracy["interval"][1] + 1e-9
