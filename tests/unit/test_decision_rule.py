"""Property: no probability vector gives an unreferred label that disagrees with its probabilities.

The same logits go through the endpoint (``inference.predict_fn``), the predict Lambda's record
(``lambdas.predict.prediction_record``) and the figures of training and ``cxr evaluate``
(``metrics.classification_metrics``): all three must tell one story, for two and three classes, with
and without the sub-type prior, any threshold in (0, 1) (or none recorded) and any margin.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corpus
from cxr import jobcode
from lambdas import predict
from lambdas.domain import imaging, threshold_amendment
from lambdas.s3io import SourceObject

decision, inference, metrics = (jobcode.load(name) for name in ("decision", "inference", "metrics"))

BINARY, THREE = ["normal", "pneumonia"], ["bacterial", "normal", "viral"]
REQUEST = inference.Request(imaging.normalise(corpus.png()), explain=False)
SOURCE = SourceObject("bucket", "incoming/x.png", 1, "v1", "")
SETTINGS = settings(max_examples=400, derandomize=True, deadline=None, database=None, print_blob=True)


class Session:
    """An ONNX session that answers with given logits (the network is not what is tested here)."""

    def __init__(self, logits: np.ndarray):
        self.logits = np.asarray(logits, dtype=np.float32)[None]

    def run(self, names, feed):
        return [self.logits, np.zeros((1, self.logits.shape[1], 2, 2), np.float32)]


@st.composite
def models(draw) -> tuple[np.ndarray, dict]:
    classes = draw(st.sampled_from([BINARY, THREE]))
    logits = np.array(draw(st.lists(st.floats(-30, 30), min_size=len(classes), max_size=len(classes))))
    share = draw(st.none() | st.floats(0.01, 0.99)) if classes == THREE else None
    config = {
        "classes": classes, "image_size": 32, "resize_policy": "squash", "model_id": "m",
        "temperature": draw(st.floats(0.05, 20)),
        "subtype_prior": None if share is None else {"bacterial": share, "viral": 1 - share},
        "threshold": draw(st.none() | st.floats(0, 1, exclude_min=True, exclude_max=True)),
    }
    margin = draw(st.none() | st.floats(1e-3, 20))
    if margin is not None:  # models trained before the margin was recorded get the default
        config["referral_margin"] = margin
    return logits, config


def served(logits: np.ndarray, config: dict) -> tuple[dict, dict]:
    """The endpoint's answer and the predict Lambda's record for one image."""
    answer = inference.predict_fn(REQUEST, inference.Model(Session(logits), config, "m"))
    return answer, predict.prediction_record(SOURCE, answer, "endpoint")


@SETTINGS
@given(model=models())
def test_no_unreferred_label_disagrees_with_its_probabilities(model):
    logits, config = model
    assert_one_story(logits, config, config["threshold"] or 0.5)


@SETTINGS
@given(model=models(), adopted=st.floats(0, 1, exclude_min=True, exclude_max=True))
def test_an_adopted_threshold_is_taken_exactly_where_the_registry_takes_it_and_tells_one_story(model, adopted):
    """``cxr models adopt-threshold`` checks against ``metrics.json``'s rule what the container checks as it
    loads: the two agree on every threshold (but the model's own, which the registry declines as nothing to
    adopt), and a model served at an adopted one keeps every guarantee."""
    logits, config = model
    described = decision.Rule.of(config).describe()
    try:
        threshold_amendment.check(adopted, described)
        registered = True
    except threshold_amendment.NotAdoptable as refused:
        registered = "the model's own" in str(refused)  # the container could serve it: it is the same rule
    try:
        adopted_config = decision.adopt_threshold(config, str(adopted))
    except ValueError:
        assert not registered, f"registered at {adopted}, but the container refuses it"
        return
    assert registered, f"the container would serve {adopted}, but the registry refuses it"
    assert adopted_config["model_threshold"] == described["threshold"]
    assert adopted_config["model_id"] == threshold_amendment.served_model_id(config["model_id"], adopted)
    assert_one_story(logits, adopted_config, adopted)


def test_no_adopted_threshold_leaves_the_model_as_it_is():
    config = {"classes": BINARY, "threshold": 0.3}
    assert decision.adopt_threshold(config, None) is config and decision.adopt_threshold(config, "") is config
    with pytest.raises(ValueError, match="outside the model's referral band"):
        decision.adopt_threshold(config, "0.9")
    with pytest.raises(ValueError, match="no normal class"):
        decision.adopt_threshold({"classes": ["cat", "dog"]}, "0.5")
    assert decision.THRESHOLD_VARIABLE == threshold_amendment.THRESHOLD_VARIABLE


def assert_one_story(logits: np.ndarray, config: dict, expected_threshold: float) -> None:
    classes = config["classes"]
    probs = decision.model_probabilities(logits, config)
    answer, record = served(logits, config)
    threshold, band = record["threshold"], record["referral_band"]
    assert threshold == expected_threshold
    assert band[0] <= threshold <= band[1] and 0 <= band[0] < band[1] <= 1
    label = classes.index(record["label"])
    pneumonia = 1 - probs[classes.index("normal")]
    if not record["refer_to_radiologist"]:
        assert probs[label] == probs.max(), "an unreferred label that is not the most probable class"
        assert (record["label"] != "normal") == (pneumonia >= threshold), "an unreferred label across the threshold"
        assert not band[0] + 1e-9 < pneumonia < band[1] - 1e-9, "an unreferred probability inside the band"
    assert record["refer_to_radiologist"] == bool(record["referral_reasons"])
    assert set(record["referral_reasons"]) <= set(decision.REASONS)
    assert {k: record[k] for k in ("label", "refer_to_radiologist", "referral_reasons", "threshold",
                                   "referral_band")} == {k: answer[k] for k in predict.REFERRAL_FIELDS + ("label",)}


@settings(SETTINGS, max_examples=150)  # scikit-learn's figures take a few ms each
@given(model=models(), truth=st.integers(0, 2))
def test_training_and_evaluate_figures_count_what_the_endpoint_serves(model, truth):
    logits, config = model
    classes = config["classes"]
    _, record = served(logits, config)
    y = np.array([truth % len(classes)])
    figures = metrics.classification_metrics(y, decision.model_probabilities(logits, config)[None], classes,
                                             decision.Rule.of(config))
    referred = record["refer_to_radiologist"]
    correct = record["label"] == classes[y[0]]
    assert figures["accuracy"] == correct
    assert figures["decision"]["referred"] == referred and figures["decision"]["coverage"] == 1 - referred
    assert figures["decision"]["unreferred_accuracy"] == (None if referred else correct)
    assert {name for name, n in figures["decision"]["reasons"].items() if n} == set(record["referral_reasons"])
    assert (figures["decision"]["threshold"], figures["decision"]["band"]) == (record["threshold"],
                                                                               record["referral_band"])


@SETTINGS
@given(threshold=st.floats(0, 1, exclude_min=True, exclude_max=True), margin=st.floats(1e-6, 50))
def test_the_band_always_contains_its_threshold(threshold, margin):
    low, high = decision.Rule(threshold, margin).band
    assert 0 <= low <= threshold <= high <= 1


def test_default_margin_refers_the_old_band_at_threshold_half():
    low, high = decision.Rule(0.5).band
    assert (low, high) == (pytest.approx(0.2), pytest.approx(0.8)) and decision.DEFAULT_MARGIN == math.log(4)


def test_the_demo_contradiction_is_referred_with_both_reasons():
    """The issue's case: threshold 0.163 fitted on validation, p(normal) 0.807, labelled bacterial."""
    probs = np.array([0.12, 0.807, 0.073])
    made = decision.decide(probs, THREE, {"threshold": 0.163})
    assert made.label == "bacterial" and made.refer
    assert made.reasons == ["near_threshold", "label_not_most_probable"]
    assert made.band[0] < 0.163 < made.band[1]
    far = decision.decide(np.array([0.01, 0.98, 0.01]), THREE, {"threshold": 0.163})
    assert (far.label, far.refer, far.reasons) == ("normal", False, [])


def test_a_confident_normal_below_a_high_threshold_is_still_referred_when_pneumonia_is_more_probable():
    """A threshold above 0.8 must not give quiet 'normal' labels to likely pneumonias."""
    made = decision.decide(np.array([0.05, 0.1, 0.85]), THREE, {"threshold": 0.95, "referral_margin": 0.1})
    assert made.label == "normal" and made.reasons == ["label_not_most_probable"]


def test_out_of_distribution_refers_whatever_the_probabilities():
    config = {"threshold": 0.5}
    assert decision.decide(np.array([0.99, 0.01]), BINARY, config).refer is False
    made = decision.decide(np.array([0.99, 0.01]), BINARY, config, out_of_distribution=True)
    assert made.label == "normal" and made.refer and made.reasons == ["out_of_distribution"]


def test_without_a_normal_class_the_margin_applies_between_the_two_most_probable():
    classes = ["cat", "dog", "fox"]
    close = decision.decide(np.array([0.45, 0.40, 0.15]), classes, {})
    clear = decision.decide(np.array([0.85, 0.10, 0.05]), classes, {})
    assert close.reasons == ["near_threshold"] and clear.refer is False
    assert close.threshold is None and close.band is None


@pytest.mark.parametrize(("threshold", "margin"), [(0.0, 1.0), (1.0, 1.0), (0.5, 0.0), (0.5, -1.0),
                                                   (0.5, math.inf), (0.5, math.nan)])
def test_a_rule_refuses_parameters_that_cannot_refer_sensibly(threshold, margin):
    with pytest.raises(ValueError):
        decision.Rule(threshold, margin)
