"""Champion/challenger: is a new model worse than the serving one on the same X-rays? (pure numpy)

Both models' answers on the fixed benchmark set (``lambdas.domain.benchmark``) are paired by image
(its content hash); a paired bootstrap resamples *patients*, not X-rays, with replacement (images of
one patient are correlated: resampling images would understate the variance), and for each resample
takes the challenger's metric minus the champion's on the same images. The challenger passes a
metric when the lower end of the two-sided percentile interval of that difference is above
``-margin`` (non-inferiority with the margin as the tolerated loss; two-sided 95 % is a one-sided
97.5 % bound). Metrics are the binary view (pneumonia vs normal): accuracy, sensitivity,
specificity from the model's own decisions, ROC-AUC from p(pneumonia) (the bootstrap, as the issue
allows, rather than DeLong, so that the four share one procedure and the patient grouping).

A resample in which a metric is undefined (no positive, or no negative, image drawn) is left out of
that metric's interval; the number of resamples kept is reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc")
DEFAULT_MARGIN = 0.02
DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 20260101
"""Fixed, so the same two models on the same set always get the same decision."""


@dataclass(frozen=True)
class Answers:
    """One model's answers on the benchmark images, in the order of ``Pairing``."""

    score: np.ndarray
    """p(pneumonia) per image."""
    called: np.ndarray
    """bool: the model called pneumonia."""


@dataclass(frozen=True)
class Pairing:
    """The images both models answered: truth and patient of each, answers in the same order."""

    truth: np.ndarray  # bool: pneumonia
    patient: np.ndarray  # int: index of the image's patient group, 0..P-1
    champion: Answers
    challenger: Answers

    @property
    def patients(self) -> int:
        return int(self.patient.max()) + 1 if len(self.patient) else 0


def pair(champion: Sequence[Mapping], challenger: Sequence[Mapping]) -> Pairing:
    """Pair two models' benchmark records (``{"content_hash", "patient", "truth", "score", "called"}``) by
    content hash; images only one model answered are left out (a benchmark image retired in between)."""
    theirs = {r["content_hash"]: r for r in champion}
    shared = sorted((r for r in challenger if r["content_hash"] in theirs), key=lambda r: r["content_hash"])
    groups: dict[str, int] = {}
    patient = np.array([groups.setdefault(str(r["patient"]), len(groups)) for r in shared], dtype=np.int64)
    for r in shared:
        if bool(theirs[r["content_hash"]]["truth"]) != bool(r["truth"]):
            raise ValueError(f"the two benchmark records of {r['content_hash']} disagree on the truth")

    def answers(records) -> Answers:
        return Answers(np.array([float(r["score"]) for r in records], dtype=np.float64),
                       np.array([bool(r["called"]) for r in records], dtype=bool))

    return Pairing(truth=np.array([bool(r["truth"]) for r in shared], dtype=bool), patient=patient,
                   champion=answers([theirs[r["content_hash"]] for r in shared]), challenger=answers(shared))


def metrics(truth: np.ndarray, answers: Answers, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric under each row of per-image ``weights`` (B, N): NaN where undefined."""
    truth = truth.astype(bool)
    correct = answers.called == truth
    pos, neg = weights[:, truth].sum(axis=1), weights[:, ~truth].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": (weights * correct).sum(axis=1) / weights.sum(axis=1),
            "sensitivity": (weights[:, truth] * correct[truth]).sum(axis=1) / pos,
            "specificity": (weights[:, ~truth] * correct[~truth]).sum(axis=1) / neg,
            "roc_auc": _weighted_auc(truth, answers.score, weights, pos, neg),
        }


def _weighted_auc(truth, score, weights, pos, neg) -> np.ndarray:
    """Mann-Whitney AUC with per-image weights (ties count one half): sort once, sum per distinct score."""
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    w = weights[:, order]
    pos_w = np.add.reduceat(w * truth[order], starts, axis=1)
    neg_w = np.add.reduceat(w * ~truth[order], starts, axis=1)
    below = np.cumsum(neg_w, axis=1) - neg_w  # negatives strictly below each distinct score
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos_w * (below + 0.5 * neg_w)).sum(axis=1) / (pos * neg)


def compare(pairing: Pairing, *, margin: float = DEFAULT_MARGIN, confidence: float = DEFAULT_CONFIDENCE,
            resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict:
    """The paired test: per metric the champion's and challenger's value, the difference, its interval and
    whether the challenger is not worse by more than ``margin``; ``passed`` when every metric is."""
    if not 0 < confidence < 1 or margin < 0 or resamples < 1:
        raise ValueError("confidence must be in (0, 1), margin >= 0, resamples >= 1")
    n, patients = len(pairing.truth), pairing.patients
    if n == 0:
        raise ValueError("the two models share no benchmark image")
    rng = np.random.default_rng(seed)
    drawn = rng.multinomial(patients, np.full(patients, 1.0 / patients), size=resamples).astype(np.float64)
    weights = drawn[:, pairing.patient]  # each image weighs as often as its patient was drawn
    ones = np.ones((1, n))
    champion, challenger = (metrics(pairing.truth, a, weights) for a in (pairing.champion, pairing.challenger))
    observed = {side: metrics(pairing.truth, a, ones) for side, a in
                (("champion", pairing.champion), ("challenger", pairing.challenger))}
    tail = (1 - confidence) / 2 * 100
    out = {}
    for name in METRICS:
        delta = challenger[name] - champion[name]
        kept = delta[~np.isnan(delta)]
        point = observed["challenger"][name][0] - observed["champion"][name][0]
        if not len(kept) or np.isnan(point):
            out[name] = {"measurable": False, "passed": True, "resamples": int(len(kept)),
                         "note": "undefined on this benchmark set (one class only): not tested"}
            continue
        low, high = np.percentile(kept, [tail, 100 - tail])
        out[name] = {"measurable": True, "champion": _round(observed["champion"][name][0]),
                     "challenger": _round(observed["challenger"][name][0]), "difference": _round(point),
                     "interval": [_round(low), _round(high)], "resamples": int(len(kept)),
                     "passed": bool(low >= -margin)}
    failures = [f"{name}: challenger - champion {out[name]['difference']:+.4f}, {confidence:.0%} interval "
                f"[{out[name]['interval'][0]:+.4f}, {out[name]['interval'][1]:+.4f}] reaches below -{margin}"
                for name in METRICS if not out[name]["passed"]]
    return {"passed": not failures, "failures": failures, "metrics": out, "images": n, "patients": patients,
            "margin": margin, "confidence": confidence, "resamples": resamples, "seed": seed,
            "method": "paired bootstrap over patients, percentile interval of challenger - champion"}


def _round(value: float) -> float:
    return round(float(value), 6)
