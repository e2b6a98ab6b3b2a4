"""The out-of-distribution guard (``ood.py``): fitted on training features, threshold on validation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf

from cxr import jobcode

ood = jobcode.load("ood")


def features(n: int, shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes in 40 correlated dimensions, the second class's mean 3 units away; ``shift`` moves all."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).normal(size=(40, 40)) / 6
    labels = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 40)) @ mixing + 3.0 * labels[:, None] * np.eye(40)[0] + shift
    return x, labels


def test_shrunk_covariance_is_ledoit_and_wolfs():
    x = features(120)[0]
    x = x - x.mean(axis=0)
    np.testing.assert_allclose(ood.ledoit_wolf(x), ledoit_wolf(x, assume_centered=True)[0], atol=1e-12)


def test_threshold_flags_at_most_the_rate_of_validation_and_about_it_on_new_in_distribution_data():
    train, labels = features(2000)
    guard = ood.fit(train, labels, features(500, seed=1)[0])
    assert ood.VALIDATION_RATE / 2 <= guard.validation_rate <= ood.VALIDATION_RATE
    assert guard.flagged(features(2000, seed=2)[0]).mean() < 0.05
    assert guard.flagged(features(200, shift=2.0, seed=3)[0]).mean() > 0.95  # every dimension off by 2


def test_a_class_mean_is_in_distribution_and_the_midpoint_between_classes_is_scored_by_the_nearer():
    train, labels = features(2000)
    guard = ood.fit(train, labels, features(500, seed=1)[0])
    assert guard.scores(guard.means[1]) == pytest.approx(0.0, abs=1e-9)
    assert guard.scores(guard.means).shape == (2,)  # one score per row


def test_saved_guard_scores_as_fitted(tmp_path):
    train, labels = features(500)
    guard = ood.fit(train, labels, features(100, seed=1)[0])
    guard.save(tmp_path / ood.FILE)
    loaded = ood.load(tmp_path / ood.FILE)
    probe = features(50, seed=4)[0]
    np.testing.assert_allclose(loaded.scores(probe), guard.scores(probe), rtol=1e-4)
    assert loaded.threshold == guard.threshold and loaded.describe()["file"] == ood.FILE


def test_the_guard_records_the_rate_it_was_fitted_to(tmp_path):
    train, labels = features(2000)
    guard = ood.fit(train, labels, features(500, seed=1)[0], rate=0.05)
    assert guard.describe()["target_validation_rate"] == 0.05 and guard.validation_rate <= 0.05
    guard.save(tmp_path / ood.FILE)
    assert ood.load(tmp_path / ood.FILE).describe() == guard.describe()
