"""bench/field_monitor.py's simulated review streams: a site where the sub-type call fails alarms within days, one
served as measured does not."""

from __future__ import annotations

import importlib

import numpy as np

from lambdas.domain import field_performance as fp

REFERENCE = {"sensitivity": fp.Reference(0.98, 500), "specificity": fp.Reference(0.97, 250),
             "subtype_accuracy": fp.Reference(0.85, 450)}


def site(subtype_accuracy: float, seed: int = 0, n: int = 1000) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = list(rng.choice(["normal", "bacterial", "viral"], size=n, p=[0.3, 0.45, 0.25]))
    labels = np.array([t if t == "normal" or rng.random() < subtype_accuracy else
                       ("viral" if t == "bacterial" else "bacterial") for t in truth])
    return truth, labels, rng.random(n) < 0.04


def test_a_failing_sub_type_call_alarms_and_a_sound_one_does_not():
    bench = importlib.import_module("bench.field_monitor")
    assert bench.site_figures(*site(0.45)[:2])["subtype_accuracy"] < 0.5
    failing = bench.first_alarms(*site(0.45), REFERENCE, per_day=200, days=20, rate=0.02, seed=1)
    assert failing["subtype_accuracy"] is not None and failing["subtype_accuracy"] <= 20
    assert failing["specificity"] is None and failing["sensitivity"] is None
    sound = bench.first_alarms(*site(0.85, seed=2), REFERENCE, per_day=200, days=20, rate=0.02, seed=1)
    assert set(sound.values()) == {None}
