"""The serving model's figures on the site's patients, from weighted review verdicts (`field_performance`)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simulated_site import population, review_items, true_measures

from lambdas.domain import field_performance as fp
from lambdas.domain import review, review_tally


def estimates(items, default_rate: float = 0.02, references=None) -> dict:
    tally = review_tally.Tally(default_rate)
    for item in items:
        tally.add(item)
    return tally.estimates(references)


@pytest.mark.parametrize(("verdicts", "settled"), [
    (["viral"], "viral"), (["viral", "viral"], "viral"), (["viral", "normal"], None),
    (["viral", "normal", "normal"], "normal"), (["not_assessable"], None),
    (["not_assessable", "not_assessable", "normal"], None), ([], None),
])
def test_a_task_is_settled_by_a_strict_majority(verdicts, settled):
    assert fp.settled(verdicts) == settled


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown verdicts"):
        fp.settled(["maybe"])
    with pytest.raises(ValueError, match="sample rate"):
        fp.inclusion(review.QUALITY_CONTROL, 0.0)
    with pytest.raises(ValueError, match="stratum"):
        fp.inclusion("curious", 0.5)
    assert fp.inclusion(review.REFERRED, None) == 1.0


def test_the_models_own_figures_come_from_its_metrics():
    metrics = {"classes": ["bacterial", "normal", "viral"],
               "binary": {"sensitivity": 0.98, "specificity": 0.95, "confusion_matrix": [[95, 5], [4, 196]]},
               "confusion_matrix": [[80, 2, 20], [1, 90, 9], [30, 0, 70]]}
    assert fp.reference_figures(metrics) == {"sensitivity": fp.Reference(0.98, 200),
                                             "specificity": fp.Reference(0.95, 100),
                                             "subtype_accuracy": fp.Reference(0.75, 200)}
    binary = {"classes": ["normal", "pneumonia"], "binary": {"sensitivity": 0.9, "specificity": None},
              "confusion_matrix": [[9, 1], [1, 9]]}
    assert fp.reference_figures(binary) == {"sensitivity": fp.Reference(0.9)}  # cases unknown: taken as exact


@pytest.mark.parametrize(("figure", "cases", "lower"), [
    (1.0, 265, 0.9857), (0.95, 100, 0.8883), (0.5, 10, 0.2366), (0.9, None, 0.9)])
def test_a_models_figure_is_a_measurement_with_its_own_interval(figure, cases, lower):
    """Wilson's score interval: a perfect 265 of 265 still only says 0.986 or more."""
    assert fp.Reference(figure, cases).lower == pytest.approx(lower, abs=1e-4)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.3, 1.0))
def test_when_every_prediction_is_reviewed_the_estimate_is_the_exact_figure(seed, specificity):
    """At a sample rate of 1 every prediction is a task: the weighting must give back the population's figures,
    whatever the model referred."""
    found = population(300, specificity, seed)
    field = estimates(review_items(found, rate=1.0))["m"]
    for name, value in true_measures(found).items():
        assert field["measures"][name]["estimate"] == pytest.approx(value, abs=1e-4)
        low, high = field["measures"][name]["interval"]
        assert low <= field["measures"][name]["estimate"] <= high
    assert field["predictions_represented"] == pytest.approx(300)


def test_a_two_percent_sample_corrects_what_the_referred_cases_alone_would_say():
    """The referred X-rays are mostly the model's errors; the raw agreement over all reviews reads far below the
    model's real specificity, the weighted estimate finds it inside its interval."""
    found = population(40_000, specificity=0.8, seed=3)
    truth = true_measures(found)
    items = review_items(found, rate=0.02)
    field = estimates(items)["m"]["measures"]
    verdicts = {i["pk"]: i["verdict"] for i in items if i["sk"].startswith("verdict#")}
    labels = {i["pk"]: i["label"] for i in items if i["sk"] == "task"}
    raw = np.mean([labels[pk] == "normal" for pk, v in verdicts.items() if v == "normal"])
    assert raw < truth["specificity"] - 0.1
    for name in fp.MEASURES:
        low, high = field[name]["interval"]
        assert low <= truth[name] <= high, (name, truth[name], field[name])
        assert abs(field[name]["estimate"] - truth[name]) < 0.05


def test_unreviewed_tasks_stand_for_the_reviewed_ones_of_their_stratum():
    found = population(40_000, specificity=0.8, seed=4)
    all_reviewed = estimates(review_items(found, rate=0.05))["m"]["measures"]
    half = estimates(review_items(found, rate=0.05, reviewed_share=0.5, seed=9))["m"]["measures"]
    truth = true_measures(found)
    for name in fp.MEASURES:
        assert abs(half[name]["estimate"] - truth[name]) < 0.05
        assert half[name]["cases"] < all_reviewed[name]["cases"]


def test_a_site_below_the_models_figure_is_said_so_and_one_within_it_is_not():
    found = population(20_000, specificity=0.72, seed=5)
    items = review_items(found, rate=0.05)
    below = estimates(items, references={"m": {"specificity": fp.Reference(0.985, 800),
                                               "sensitivity": fp.Reference(0.5)}})["m"]
    assert below["below_model_figure"] == ["specificity"]
    assert below["measures"]["specificity"]["model_figure"] == 0.985
    assert below["measures"]["sensitivity"]["below_model_figure"] is False
    assert estimates(items, references={"m": {"specificity": fp.Reference(0.72)}})["m"]["below_model_figure"] == []
    # a model measured on 12 normals only: 11 of 12 says no more than about 0.65, and the site's 0.72 is not below it
    loose = estimates(items, references={"m": {"specificity": fp.Reference(11 / 12, 12)}})["m"]
    assert loose["below_model_figure"] == [] and loose["measures"]["specificity"]["model_figure_lower"] < 0.7


def test_too_few_cases_give_no_figure():
    items = review_items(population(60, 0.9, seed=6), rate=0.02)
    field = estimates(items)["m"]["measures"]
    assert field["subtype_accuracy"]["cases"] < fp.MIN_CASES
    assert field["subtype_accuracy"]["estimate"] is None and "fewer than" in field["subtype_accuracy"]["note"]


def test_withdrawn_tasks_old_rates_and_split_reviewers():
    items = [
        {"pk": "a", "sk": "task", "reason": "quality_control", "label": "normal", "model_id": "m",
         "status": "reviewed"},  # no recorded rate: the deployment's rate (0.1) now
        {"pk": "a", "sk": "verdict#r1", "verdict": "normal"},
        {"pk": "b", "sk": "task", "reason": "referred", "label": "viral", "model_id": "m", "status": "withdrawn"},
        {"pk": "c", "sk": "task", "reason": "referred", "label": "viral", "model_id": "m", "status": "adjudication"},
        {"pk": "c", "sk": "verdict#r1", "verdict": "normal"}, {"pk": "c", "sk": "verdict#r2", "verdict": "viral"},
        {"pk": "c", "sk": "view#2026-12-01#r3"},
    ]
    tally = review_tally.Tally(0.1)
    for item in items:
        tally.add(item)
    field = tally.estimates()["m"]
    assert tally.weight["m"] == {"referred": 1.0, "quality_control": 10.0}  # b withdrawn, c open to a third reader
    assert field["reviewed"] == 1 and field["predictions_represented"] == 11.0


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False))
def test_the_figures_do_not_depend_on_the_scans_order(random):
    """A sequential scan reads each task with its verdicts; any other order (verdicts apart from their task) must
    give the same figures."""
    items = review_items(population(400, 0.8, seed=7), rate=0.2)
    shuffled = list(items)
    random.shuffle(shuffled)
    assert estimates(shuffled) == estimates(items)


def test_models_are_estimated_apart():
    found = population(2_000, 0.9, seed=8)
    items = review_items(found, rate=0.5)
    for item in items[: len(items) // 2]:
        if item["sk"] == "task":
            item["model_id"] = "old"
    both = estimates(items)
    assert set(both) == {"m", "old"}
    assert both["m"]["reviewed"] + both["old"]["reviewed"] == sum(i["sk"].startswith("verdict#") for i in items)


def test_a_two_class_model_has_no_sub_type_measure():
    found = population(2_000, 0.9, seed=10)
    for p in found:
        p["label"] = "pneumonia" if p["label"] != "normal" else "normal"
    field = estimates(review_items(found, rate=0.5))["m"]
    assert set(field["measures"]) == {"sensitivity", "specificity"}
    assert abs(field["measures"]["sensitivity"]["estimate"] - true_measures(found)["sensitivity"]) < 0.05


def test_the_referred_cases_alone_never_speak_for_the_unreferred_predictions():
    """Twenty referred pneumonias, most of them called normal, and two sampled ones: the referred errors would read
    as a sensitivity of 0.3 for every prediction; with too few quality-control cases there is no figure."""
    referred = fp.Reviewed(review.REFERRED, 1.0, "normal", "bacterial")
    caught = fp.Reviewed(review.REFERRED, 1.0, "bacterial", "bacterial")
    sampled = fp.Reviewed(review.QUALITY_CONTROL, 0.02, "viral", "viral")
    found = fp.estimate({referred: 14, caught: 6, sampled: 2}, {"referred": 20.0, "quality_control": 100.0},
                        {"sensitivity": fp.Reference(0.98, 400)})
    sensitivity = found["measures"]["sensitivity"]
    assert sensitivity["estimate"] is None and "quality-control cases" in sensitivity["note"]
    assert found["below_model_figure"] == []
    everything_referred = fp.estimate({referred: 14, caught: 6}, {"referred": 20.0},
                                      {"sensitivity": fp.Reference(0.98, 400)})
    assert everything_referred["measures"]["sensitivity"]["estimate"] == 0.3  # no unreferred predictions to stand for
    assert everything_referred["below_model_figure"] == ["sensitivity"]
