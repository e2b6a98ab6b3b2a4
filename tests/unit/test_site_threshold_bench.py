"""bench/site_threshold.py's simulated review streams: a site whose normals score high gets a threshold that gains
specificity there and keeps its sensitivity."""

from __future__ import annotations

import importlib
import math

import numpy as np
from simulated_site import scored_population


def site(seed: int = 0):
    bench = importlib.import_module("bench.field_monitor")
    found = scored_population(6000, threshold=0.2, margin=math.log(4), seed=seed)
    truth = ["bacterial" if sick else "normal" for sick in found["pneumonia"]]
    labels = np.where(found["probability"] >= 0.2, "bacterial", "normal")
    return bench.Site(truth, labels, found["referred"], found["probability"], 0.2, tuple(found["band"]))


def test_streams_fit_a_higher_threshold_that_serves_the_whole_site():
    bench = importlib.import_module("bench.site_threshold")
    scored = site()
    best = bench.best_in_band(scored, 0.95)
    assert 0.2 < best < scored.band[1]
    fits = [bench.stream_fits(scored, per_day=400, days=[10, 40], rate=0.02, seed=seed) for seed in range(3)]
    assert all(f[10][0] is None or 0.2 <= f[10][0] <= best for f in fits)
    summary = bench.summarise(scored, [f[40] for f in fits], 0.95)
    assert summary["offered"] == 3 and summary["moves"] == {"raise": 3} and summary["sensitivity_below_target"] == 0
    assert summary["specificity_gain"][0] > 0.03
    model_sensitivity, model_specificity = summary["model_threshold_figures"]
    assert model_sensitivity > 0.99 and model_specificity < 0.9
