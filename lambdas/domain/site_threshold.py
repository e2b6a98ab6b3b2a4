"""The decision threshold this site's patients call for, fitted to the radiologists' verdicts (pure numpy).

A model's threshold on p(pneumonia) was chosen on the acquisitions it was trained on. On another population the
same threshold can call far more normals pneumonia: the default Kermany model read specificity 0.714 on the
official test, at sensitivity 0.995, well above the 0.95 the product aims for (README, "Measured").
``field_performance`` tells a site when its figures fall; this module says which threshold would serve it
instead, from the same verdicts, short of retraining:

* **The evidence.** Every reviewed task keeps the model's p(pneumonia) and the settled verdict, weighted as in
  ``field_performance`` (``1 / inclusion``, each stratum scaled up to its unreviewed tasks; stratified
  bootstrap). Sensitivity and specificity at any threshold are ratios of those weights.
* **Where the threshold may move: inside the model's referral band only.** Every prediction in the band was
  referred, so every one there is a task: moving the threshold across the band changes the call of cases that
  radiologists have read, not of cases a 2 % sample stands for. Beyond the band a move would rest on the sample
  alone, where a stretch with no sampled error reads as no error at all.
* **The rule.** Sensitivity must stay at or above the target (0.95, the rule ``train.py --threshold-rule
  sensitivity`` applies on validation), as a one-sided 95 % lower bound (:func:`_sensitivity_bound`). Where the
  model's threshold is shown to keep it, the fit is the threshold in the band with the most specificity still
  shown to keep it, and of those equal in specificity the lowest: a higher one would give up sensitivity for
  nothing (``raise``, or ``keep``). Where the site's sensitivity is estimated below the target, it is the
  highest lower threshold shown to keep it (``lower``), or none. In between (estimated at the target, not yet
  shown to keep it) the model's threshold stays: thin evidence is no reason to move either way.
* **What it is not.** The fitted threshold changes no prediction by itself: it is a finding for the site, with
  the figures to judge it by (estimates on the reviewed history, with their intervals). Serving it is a model
  change: a ``model.json`` that records it, registered and gated like any model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from . import field_performance
from .field_performance import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, MIN_CASES, STRATA
from .labels import NORMAL
from .review import QUALITY_CONTROL

TARGET_SENSITIVITY = 0.95
RAISE, KEEP, LOWER = "raise", "keep", "lower"
DECIMALS = 3
"""p(pneumonia) is counted to three decimals: tasks alike to that are one counter, so a table of any size is at
most a few thousand cells, and a threshold finer than 0.001 is not a decision anyone can check."""


@dataclass(frozen=True, order=True)
class Scored:
    """A reviewed task's cell for the threshold: why it was reviewed, how likely that was, the model's
    p(pneumonia) (rounded to :data:`DECIMALS`) and whether the settled verdict is a pneumonia."""

    stratum: str
    inclusion: float
    probability: float
    pneumonia: bool


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold the tasks were decided at and its referral band, as the tasks record them."""

    threshold: float
    band: tuple[float, float]

    @classmethod
    def of(cls, item: Mapping) -> OperatingPoint | None:
        """From a task item; None when it records no threshold (a model without a normal class, or an old task)."""
        threshold, band = item.get("threshold"), item.get("referral_band")
        if threshold is None or not band:
            return None
        return cls(round(float(threshold), 6), (round(float(band[0]), 6), round(float(band[1]), 6)))


def cell(stratum: str, inclusion: float, probability: float, verdict: str) -> Scored:
    return Scored(stratum, inclusion, round(float(probability), DECIMALS), verdict != NORMAL)


def fit(scored: Mapping[Scored, int], tasks_per_stratum: Mapping[str, float], point: OperatingPoint, *,
        target: float = TARGET_SENSITIVITY, confidence: float = DEFAULT_CONFIDENCE,
        resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict:
    """The site's threshold for one model: its figures at the model's threshold and at the fitted one.

    ``scored``: reviewed tasks per cell; ``tasks_per_stratum`` as in ``field_performance.estimate``; ``point``: the
    threshold and band the model's tasks were decided at.
    """
    if not 0 < target < 1:
        raise ValueError(f"target sensitivity must be inside (0, 1), got {target}")
    cells = sorted(c for c, n in scored.items() if n > 0)
    counts = np.array([scored[c] for c in cells], dtype=np.float64)
    stratum = np.array([STRATA.index(c.stratum) for c in cells], dtype=np.int64)
    pneumonia = np.array([c.pneumonia for c in cells], dtype=bool)
    sampled = stratum == STRATA.index(QUALITY_CONTROL)
    found = {"model_threshold": point.threshold, "band": list(point.band), "target_sensitivity": target,
             "reviewed": int(counts.sum()), "pneumonias": int(counts[pneumonia].sum()),
             "normals": int(counts[~pneumonia].sum()), "confidence": confidence, "resamples": resamples,
             "seed": seed, "threshold": None,
             "rule": f"inside the model's referral band, the most specificity with sensitivity shown (one-sided "
                     f"{confidence:.0%} bound) to stay at or above {target}, at the lowest threshold giving it; the "
                     "model's own while its sensitivity is estimated at the target but not yet shown to keep it"}
    short = _short_of_evidence(counts, pneumonia, sampled, tasks_per_stratum)
    if short:
        return {**found, "note": short}
    probability = np.array([c.probability for c in cells], dtype=np.float64)
    weights = field_performance.bootstrap_weights(counts, stratum, np.array([c.inclusion for c in cells]),
                                                  tasks_per_stratum, resamples, seed)
    low, high = point.band
    inside = np.unique(probability[(probability > low) & (probability < high)])
    candidates = np.unique(np.append(inside, round(point.threshold, DECIMALS)))
    sensitivity, specificity = _rates(weights, probability, pneumonia, candidates)
    lower = _sensitivity_bound(weights[0], probability, pneumonia, sampled, counts, candidates, 1 - confidence)
    tail = (1 - confidence) / 2 * 100
    current = int(np.searchsorted(candidates, round(point.threshold, DECIMALS)))
    found["at_model_threshold"] = _figures(sensitivity[:, current], lower[current], specificity[:, current], tail)
    keeping = lower >= target
    if keeping[current]:  # shown to keep the target here: the most specificity still shown to keep it, for the
        # least sensitivity (specificity only grows with the threshold, so: the lowest threshold reaching the best)
        shown = np.flatnonzero(keeping[current:]) + current
        best = specificity[0, shown].max()
        chosen, move = int(shown[specificity[0, shown] >= best].min()), RAISE
    elif sensitivity[0, current] < target:  # estimated short of it: the highest threshold below shown to keep it
        below = np.flatnonzero(keeping[:current])
        if not len(below):
            return {**found, "move": None,
                    "note": f"sensitivity here is below {target} at the model's threshold, and no threshold inside its "
                            "referral band is shown to keep it: the site needs a model trained for it"}
        chosen, move = int(below.max()), LOWER
    else:  # estimated at the target or above, not yet shown to keep it: no move either way
        return {**found, "threshold": float(candidates[current]), "move": KEEP,
                "note": f"not yet shown to keep sensitivity {target} at the model's threshold (at least "
                        f"{lower[current]:.3f}), nor to fall short of it: more verdicts will tell"}
    if chosen == current:
        move = KEEP
    gain = specificity[:, chosen] - specificity[:, current]
    return {**found, "threshold": float(candidates[chosen]), "move": move,
            "at_threshold": _figures(sensitivity[:, chosen], lower[chosen], specificity[:, chosen], tail),
            "specificity_change": _figure(gain, tail)}


def _short_of_evidence(counts: np.ndarray, pneumonia: np.ndarray, sampled: np.ndarray,
                       tasks_per_stratum: Mapping[str, float]) -> str | None:
    """Why the verdicts cannot carry a fit (``field_performance.MIN_CASES``, for both classes), or None."""
    for name, members in (("pneumonias", pneumonia), ("normals", ~pneumonia)):
        if counts[members].sum() < MIN_CASES:
            return f"fewer than {MIN_CASES} reviewed {name}"
        if tasks_per_stratum.get(QUALITY_CONTROL, 0.0) > 0 and counts[members & sampled].sum() < MIN_CASES:
            return f"fewer than {MIN_CASES} reviewed {name} from quality control (the sample standing for the " \
                   "predictions nobody referred)"
    return None


def _rates(weights: np.ndarray, probability: np.ndarray, pneumonia: np.ndarray,
           candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity at each candidate threshold (p >= threshold calls pneumonia), for every row of
    ``weights``: shape ``(rows, candidates)``."""
    order = np.argsort(probability, kind="stable")
    weights, probability, pneumonia = weights[:, order], probability[order], pneumonia[order]
    below = np.searchsorted(probability, candidates, side="left")  # cells called normal at each candidate
    zero = np.zeros((len(weights), 1))
    positives = np.concatenate([zero, np.cumsum(weights * pneumonia, axis=1)], axis=1)
    negatives = np.concatenate([zero, np.cumsum(weights * ~pneumonia, axis=1)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = 1.0 - positives[:, below] / positives[:, -1:]
        specificity = negatives[:, below] / negatives[:, -1:]
    return np.nan_to_num(sensitivity, nan=0.0), np.nan_to_num(specificity, nan=0.0)


def _sensitivity_bound(weights: np.ndarray, probability: np.ndarray, pneumonia: np.ndarray, sampled: np.ndarray,
                       counts: np.ndarray, candidates: np.ndarray, alpha: float) -> np.ndarray:
    """A one-sided ``1 - alpha`` lower bound on sensitivity at each candidate.

    The referred cases are counted as reviewed (their stratum scaled up to its unreviewed tasks). The sample's
    pneumonias are bounded exactly (Poisson, ``alpha / 2`` each side): the missed ones from above, the caught ones
    from below, each counted at the largest weight a sampled task carries. A percentile bootstrap would not do:
    the sample's missed pneumonias are a handful of tasks, and resampling a handful cannot show how many more
    there could be (bench/RESULTS.md, "The threshold a site calls for").
    """
    most = float((weights[sampled] / counts[sampled]).max()) if sampled.any() else 0.0
    below = probability[:, None] < candidates[None, :]  # cells called normal at each candidate
    referred, drawn = (pneumonia & ~sampled)[:, None], (pneumonia & sampled)[:, None]

    def sampled_bound(cells: np.ndarray, extreme) -> np.ndarray:
        """The sampled pneumonias' weight in ``cells``, their count moved to its Poisson bound."""
        k = (counts[:, None] * cells).sum(axis=0)
        return (weights[:, None] * cells).sum(axis=0) + most * (np.array([extreme(int(n), alpha / 2) for n in k]) - k)

    missed = (weights[:, None] * (referred & below)).sum(axis=0) + sampled_bound(drawn & below, _poisson_upper)
    caught = ((weights[:, None] * (referred & ~below)).sum(axis=0)
              + np.maximum(sampled_bound(drawn & ~below, _poisson_lower), 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(caught / (missed + caught), nan=0.0)


@functools.cache
def _poisson_upper(k: int, alpha: float) -> float:
    """The mean of a Poisson count whose chance of showing ``k`` or fewer is ``alpha`` (Garwood's upper bound)."""
    return _solve(lambda mean: _poisson_cdf(k, mean) - alpha, k, 2 * k + 10 * (1 + math.sqrt(k)))


@functools.cache
def _poisson_lower(k: int, alpha: float) -> float:
    """The mean of a Poisson count whose chance of showing ``k`` or more is ``alpha`` (0 for ``k`` = 0)."""
    if k == 0:
        return 0.0
    return _solve(lambda mean: alpha - (1 - _poisson_cdf(k - 1, mean)), 0.0, k)


def _poisson_cdf(k: int, mean: float) -> float:
    if mean <= 0:
        return 1.0
    i = np.arange(k + 1)
    terms = -mean + i * math.log(mean) - np.concatenate([[0.0], np.cumsum(np.log(i[1:]))])
    return float(min(1.0, np.exp(terms).sum()))


def _solve(decreasing, low: float, high: float) -> float:
    """The root of a function decreasing on ``[low, high]`` (bisection to 1e-9)."""
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if decreasing(middle) > 0 else (low, middle)
        if high - low < 1e-9:
            break
    return (low + high) / 2


def _figures(sensitivity: np.ndarray, sensitivity_bound: float, specificity: np.ndarray, tail: float) -> dict:
    return {"sensitivity": {**_figure(sensitivity, tail), "lower_bound": round(float(sensitivity_bound), 4)},
            "specificity": _figure(specificity, tail)}


def _figure(values: np.ndarray, tail: float) -> dict:
    """Row 0's value and the percentile interval of the resampled rows."""
    return {"estimate": round(float(values[0]), 4),
            "interval": [round(float(v), 4) for v in np.percentile(values[1:], [tail, 100 - tail])]}

