"""bench/seed_ensemble.py: independent groups of seeds, and an ensemble scored as one model."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("bench.seed_ensemble")


def _member(seed: int, noise: float, y_test: np.ndarray, y_val: np.ndarray) -> dict:
    """A two-class member whose p(pneumonia) is the truth plus this seed's own noise."""
    rng = np.random.default_rng(seed)

    def probs(y):
        p = np.clip(0.5 + 0.3 * np.where(y == 1, 1, -1) + rng.normal(0, noise, len(y)), 0.001, 0.999)
        return np.stack([1 - p, p], axis=1)

    return {"classes": ["normal", "pneumonia"], "test": (probs(y_test), y_test), "validation": (probs(y_val), y_val)}


@given(st.integers(1, 30), st.integers(1, 6))
def test_groups_are_disjoint_consecutive_and_full_sized(bench, count, size):
    seeds = [f"w{i}" for i in range(count)]
    found = bench.groups(seeds, size)
    assert all(len(g) == size for g in found)
    assert [s for g in found for s in g] == seeds[:len(found) * size]
    assert len(found) == count // size


def test_an_ensemble_of_one_member_is_that_member_and_averaging_independent_errors_helps(bench):
    y_test, y_val = np.arange(400) % 3 != 0, np.arange(200) % 3 != 0
    y_test, y_val = y_test.astype(int), y_val.astype(int)
    members = [_member(seed, 0.35, y_test, y_val) for seed in range(5)]
    alone = bench.figures(members[:1])
    assert alone["auc"] == pytest.approx(roc_auc_score(y_test, members[0]["test"][0][:, 1]))
    together = bench.figures(members)
    assert together["auc"] > max(bench.figures([m])["auc"] for m in members)


def test_members_scored_on_different_images_are_refused(bench):
    y = np.arange(100) % 2
    other = y.copy()
    other[0] = 1 - other[0]
    with pytest.raises(ValueError, match="same images"):
        bench.figures([_member(0, 0.2, y, y), _member(1, 0.2, other, y)])
