"""Metrics, calibration and decision rules of the training job (``metrics.py``, ``decision.py``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from cxr import jobcode

m = jobcode.load("metrics")
decision = jobcode.load("decision")
CLASSES = ["bacterial", "normal", "viral"]


def overconfident(n: int = 600, seed: int = 0):
    """Logits whose argmax is right 80 % of the time but that claim ~100 % confidence."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    predicted = np.where(rng.random(n) < 0.8, y, (y + 1) % 3)
    logits = rng.normal(0, 0.5, (n, 3))
    logits[np.arange(n), predicted] += 8.0
    return logits, y


def test_temperature_scaling_reduces_calibration_error_and_nll():
    logits, y = overconfident()
    t = m.fit_temperature(logits, y, CLASSES)
    assert t > 1.5  # softened
    before, after = decision.softmax(logits), decision.softmax(logits, t)
    assert m.expected_calibration_error(after, y) < m.expected_calibration_error(before, y) / 2
    assert skm.log_loss(y, after, labels=[0, 1, 2]) < skm.log_loss(y, before, labels=[0, 1, 2])
    assert (after.argmax(1) == before.argmax(1)).all()  # calibration never changes a decision


def test_metrics_match_sklearn_and_binary_view_folds_subtypes():
    logits, y = overconfident(seed=1)
    probs = decision.softmax(logits)
    out = m.classification_metrics(y, probs, CLASSES)
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, probs.argmax(1)))
    assert out["macro_f1"] == pytest.approx(skm.f1_score(y, probs.argmax(1), average="macro"))
    assert out["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"))
    truth = y != 1
    called = probs.argmax(1) != 1
    assert out["binary"]["accuracy"] == pytest.approx((truth == called).mean())
    assert out["binary"]["roc_auc"] == pytest.approx(skm.roc_auc_score(truth, 1 - probs[:, 1]))
    assert out["binary"]["sensitivity"] == pytest.approx(called[truth].mean())
    assert out["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, probs.argmax(1)))


def test_a_folder_without_one_class_is_scored_quietly():
    """The 16 samples have no viral X-ray; predicting viral for one is an error, not a warning."""
    y = np.array([0, 0, 0, 1, 1, 1])
    probs = np.eye(3)[[0, 2, 0, 1, 1, 1]] * 0.9 + 0.1 / 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = m.classification_metrics(y, probs, CLASSES)
    assert out["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["roc_auc"] is None and out["per_class"]["viral"]["support"] == 0


def test_threshold_only_kept_when_it_clearly_helps():
    rng = np.random.default_rng(3)
    y = np.array([1] * 200 + [0] * 200)  # normal, then bacterial
    p_pneumonia = np.concatenate([rng.uniform(0.3, 0.7, 200), rng.uniform(0.6, 1.0, 200)])
    probs = np.stack([p_pneumonia, 1 - p_pneumonia, np.zeros(400)], axis=1)
    threshold = m.choose_threshold(probs, y, CLASSES)  # argmax at 0.5 calls many normals pneumonia
    assert threshold is not None and threshold > 0.55
    separable = np.stack([np.r_[np.full(200, 0.1), np.full(200, 0.9)], np.r_[np.full(200, 0.9), np.full(200, 0.1)],
                          np.zeros(400)], axis=1)
    assert m.choose_threshold(separable, y, CLASSES) is None  # saturated validation: keep argmax


def test_no_threshold_at_the_edge_of_the_probabilities():
    """A model that ranks backwards gets Youden's 'call nothing pneumonia' (1.0): no rule can refer around it."""
    y = np.array([1] * 10 + [0] * 10)
    probs = np.where((y == 1)[:, None], [0.45, 0.1, 0.45], [0.05, 0.9, 0.05])  # normals score as pneumonia
    assert m.choose_threshold(probs, y, CLASSES) is None


def test_metrics_count_the_referrals_of_the_models_rule():
    probs = np.array([[0.01, 0.98, 0.01],   # normal, far below the threshold: decided
                      [0.12, 0.807, 0.073],  # bacterial at p(normal) 0.807: near the threshold, normal most probable
                      [0.60, 0.05, 0.35],   # bacterial, far above: decided, but truly viral
                      [0.30, 0.40, 0.30]])  # bacterial while normal is most probable
    rule = decision.Rule(0.163)
    out = m.classification_metrics(np.array([1, 1, 2, 0]), probs, CLASSES, rule)["decision"]
    assert out["referred"] == 2 and out["coverage"] == 0.5 and out["unreferred_accuracy"] == 0.5
    assert out["reasons"] == {"near_threshold": 1, "label_not_most_probable": 2, "out_of_distribution": 0}
    assert out["threshold"] == 0.163 and out["band"][0] < 0.163 < out["band"][1] and out["margin"] == np.log(4)


def test_threshold_changes_only_the_normal_decision():
    probs = np.array([[0.30, 0.45, 0.25], [0.10, 0.60, 0.30]])
    assert decision.predict(probs, CLASSES).tolist() == [1, 1]
    assert decision.predict(probs, CLASSES, threshold=0.5).tolist() == [0, 1]  # 0.55 >= 0.5 -> most likely subtype


def test_subtype_prior_keeps_p_pneumonia_and_splits_it_by_the_training_mix():
    prior = decision.subtype_prior({"bacterial": 200, "normal": 93, "viral": 100})
    assert prior == pytest.approx({"bacterial": 2 / 3, "viral": 1 / 3})
    logits = np.array([[1.0, 0.5, 1.0], [0.2, 2.0, 0.9], [-1.0, 0.0, 0.4]])
    plain, weighted = decision.softmax(logits), decision.probabilities(logits, CLASSES, 1.0, prior)
    assert weighted.sum(axis=1) == pytest.approx(np.ones(3))
    assert weighted[:, 1] == pytest.approx(plain[:, 1])  # normal vs pneumonia untouched
    assert weighted[0, 0] / weighted[0, 2] == pytest.approx(2.0)  # equal scores: the mix decides
    assert decision.predict(weighted, CLASSES).tolist()[0] == 0
    # a binary model, or a split with one sub-type, has nothing to re-weight
    assert decision.subtype_prior({"normal": 10, "pneumonia": 30}) is None
    assert decision.subtype_prior({"normal": 10, "bacterial": 30, "viral": 0}) is None


def test_temperature_is_fitted_to_the_probabilities_served():
    logits, y = overconfident(seed=2)
    prior = {"bacterial": 0.7, "viral": 0.3}
    t = m.fit_temperature(logits, y, CLASSES, prior)

    def nll(temperature):
        return skm.log_loss(y, decision.probabilities(logits, CLASSES, temperature, prior), labels=[0, 1, 2])

    assert nll(t) <= min(nll(t * 0.9), nll(t * 1.1))


def _binary_sets(draw_sizes, seed):
    rng = np.random.default_rng(seed)
    sets = []
    for positives, negatives in draw_sizes:
        truth = np.r_[np.ones(positives, bool), np.zeros(negatives, bool)]
        score = np.round(np.clip(rng.normal(np.where(truth, 0.7, 0.35), 0.2), 0, 1), 2)  # ties on purpose
        sets.append((score, truth))
    return sets


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(1, 40), st.integers(0, 40)), min_size=1, max_size=4),
       target=st.floats(0.5, 1.0), seed=st.integers(0, 10_000))
def test_sensitivity_threshold_is_the_highest_that_keeps_sensitivity_on_every_set(sizes, target, seed):
    sets = _binary_sets(sizes, seed)
    t = m.sensitivity_threshold(sets, target)

    def sensitivity(threshold, score, truth):
        return (score[truth] >= threshold).mean()

    assert all(sensitivity(t, s, y) >= target - 1e-12 for s, y in sets)
    higher = min(v for s, _ in sets for v in s if v > t) if any((s > t).any() for s, _ in sets) else None
    if higher is not None:  # any higher threshold breaks the target on some set
        # (specificity only rises with the threshold, so no feasible one gives any set more)
        assert any(sensitivity(higher, s, y) < target - 1e-12 for s, y in sets)


def test_operating_point_trades_youden_for_specificity_at_the_sensitivity_floor():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(300, int), np.zeros(300, int)]  # index 1 = normal
    p_normal = np.clip(rng.normal(np.where(y == 1, 0.25, 0.75), 0.15), 0, 1)
    probs = np.c_[1 - p_normal, p_normal]
    classes = ["bacterial", "normal"]
    t = m.choose_operating_point(probs, y, classes, 0.95)
    called = 1 - p_normal >= t
    is_pneumonia = y == 0
    assert called[is_pneumonia].mean() >= 0.95 > (1 - p_normal >= t + 0.01)[is_pneumonia].mean()
    assert m.choose_operating_point(probs, y, ["bacterial", "viral"]) is None  # no normal class: argmax
    assert m.sensitivity_threshold([(np.array([0.2, 0.9]), np.array([False, False]))]) is None


def test_specificity_at_sensitivity_by_hand():
    """bench/proxies.py, bench/tta.py and bench/int8_shift.py rank recipes by this one figure."""
    score = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.2, 0.1])
    truth = np.r_[np.ones(4, bool), np.zeros(4, bool)]
    assert m.at_sensitivity(score, truth, 0.75) == {"threshold": 0.6, "accuracy": 0.75, "sensitivity": 0.75,
                                                    "specificity": 0.75}
    assert m.at_sensitivity(score, truth, 0.95) == {"threshold": 0.3, "accuracy": 0.75, "sensitivity": 1.0,
                                                    "specificity": 0.5}
    assert m.at_sensitivity(score, np.zeros(8, bool)) == {"threshold": None}  # no pneumonia: no operating point
    assert m.at_sensitivity(score[:4], truth[:4])["specificity"] is None  # no normals


@settings(max_examples=60, deadline=None)
@given(sizes=st.tuples(st.integers(1, 40), st.integers(1, 40)), target=st.floats(0.5, 1.0), seed=st.integers(0, 10_000))
def test_specificity_at_sensitivity_is_the_normals_below_the_sets_own_threshold(sizes, target, seed):
    """The expression the benches computed inline before they shared :func:`metrics.at_sensitivity`."""
    [(score, truth)] = _binary_sets([sizes], seed)
    own = m.sensitivity_threshold([(score, truth)], target)
    assert m.at_sensitivity(score, truth, target)["specificity"] == float((score[~truth] < own).mean())
