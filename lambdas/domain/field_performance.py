"""How the serving model does on this site's own patients, estimated from the radiologists' verdicts (pure numpy).

A model's figures describe the acquisitions it was trained on. The official Kermany test showed how far another
population can be from them: specificity 0.985 on the split cut from train, 0.714 on the official test, and no
proxy built from the training data saw it coming (README, "Measured"). The review loop is the one source of
truth about the patients a deployment actually serves, so this module turns its verdicts into the serving
model's figures on them:

* **Who is reviewed.** Every referred prediction becomes a task, and a quality-control sample of the others at
  the sample rate in force when it was drawn (the task records it; ``lambdas.domain.review``). A reviewed task
  therefore stands for ``1 / inclusion probability`` predictions (Horvitz-Thompson weighting): a quality-control
  verdict at 2 % weighs fifty referred ones, which is what keeps the estimate from describing only the hard cases.
* **Tasks not yet reviewed**, or reviewed as not assessable, are assumed like the reviewed ones of their stratum
  (referred, quality control): each stratum's weights are scaled up to all of its tasks. Withdrawn tasks (the
  upload was overwritten or deleted) are no longer predictions and count nowhere.
* **Measures**, as ratios of weighted counts: sensitivity and specificity (normal vs pneumonia), and sub-type
  accuracy (bacterial vs viral, among the pneumonias that both the model and the reviewer sub-typed: the call
  that failed on Kermany's latest patients, bench/RESULTS.md "Patients and their order").
* **Intervals**: 95 % percentile intervals of a stratified bootstrap over the reviewed tasks, with a fixed seed
  so that the same verdicts always read the same. Tasks, not patients, are resampled (tasks carry no patient):
  a patient with several X-rays narrows the intervals somewhat.
* **Below the model's own figure** is said only when the whole interval lies below the lower end of the model's
  own 95 % interval (Wilson's, on the images it was measured on: its ``metrics.json``, see
  :func:`reference_figures`). A model's figure is itself a measurement: a validation specificity of 1.000 on 265
  normals says at least 0.986, and a site reading 0.96 is not worse than that measurement can tell. When the
  intervals do not meet, this site's patients are not served as the model was measured, and the figure to plan
  by is the one estimated here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .labels import BACTERIAL, NORMAL, VIRAL
from .review import NOT_ASSESSABLE, QUALITY_CONTROL, REFERRED, VERDICTS

MEASURES = ("sensitivity", "specificity", "subtype_accuracy")
STRATA = (REFERRED, QUALITY_CONTROL)
DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 20261201
MIN_CASES = 10
"""Fewer reviewed cases in a measure's denominator give no estimate: a rate of 3 of 4 is not a finding. The
quality-control sample must bring as many on its own wherever there are unreferred predictions: it is their only
view, and without it the referred cases (where the model's errors gather) would speak for every prediction. In
simulated review streams from scored Kermany sites (``bench/field_monitor.py``) that is what raised the false
alarms of the first days."""
SUBTYPES = (BACTERIAL, VIRAL)


@dataclass(frozen=True, order=True)
class Reviewed:
    """A reviewed task's cell: why it was reviewed, how likely that was, the model's label and the reviewers'
    settled verdict."""

    stratum: str
    """``referred`` or ``quality_control``: why the prediction was reviewed."""
    inclusion: float
    """The probability that this prediction became a task: 1 when referred, the sample rate when sampled."""
    label: str
    verdict: str


def settled(verdicts: Sequence[str]) -> str | None:
    """The verdict a strict majority of the task's reviewers gave (one reviewer: theirs); None while they are
    split (a task in adjudication) or when the majority found the X-ray not assessable."""
    unknown = set(verdicts) - set(VERDICTS)
    if unknown:
        raise ValueError(f"unknown verdicts {sorted(unknown)}")
    for verdict in set(verdicts):
        if 2 * list(verdicts).count(verdict) > len(verdicts):
            return None if verdict == NOT_ASSESSABLE else verdict
    return None


def inclusion(stratum: str, sample_rate: float | None) -> float:
    """A task's inclusion probability: referred predictions are all reviewed; a sampled one had ``sample_rate``."""
    if stratum == REFERRED:
        return 1.0
    if stratum != QUALITY_CONTROL:
        raise ValueError(f"unknown review stratum {stratum!r}; one of {STRATA}")
    if sample_rate is None or not 0.0 < float(sample_rate) <= 1.0:
        raise ValueError(f"a quality-control task needs its sample rate in (0, 1], got {sample_rate!r}")
    return float(sample_rate)


@dataclass(frozen=True)
class Reference:
    """A model's own figure and the number of cases it was measured on (None: unknown, taken as exact)."""

    figure: float
    cases: int | None = None

    @property
    def lower(self) -> float:
        """The lower end of its 95 % Wilson score interval (the figure itself when the cases are unknown)."""
        if not self.cases:
            return self.figure
        z, n, p = 1.959964, self.cases, self.figure
        centre, spread = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return (centre - spread) / (1 + z * z / n)


def reference_figures(metrics: Mapping) -> dict[str, Reference]:
    """The model's own figures to compare with (a ``metrics.json``, or its ``validation`` part): binary sensitivity
    and specificity with their cases from the binary confusion matrix (rows truth: normal, pneumonia), and sub-type
    accuracy from the confusion matrix (rows truth, columns the model's label) when it has both sub-types; a figure
    it lacks is left out."""
    binary = metrics.get("binary") or {}
    rows = np.asarray(binary.get("confusion_matrix") or [[0, 0], [0, 0]]).sum(axis=1)
    found = {name: Reference(float(binary[name]), int(n) or None)
             for name, n in (("specificity", rows[0]), ("sensitivity", rows[1])) if binary.get(name) is not None}
    classes, matrix = metrics.get("classes") or [], metrics.get("confusion_matrix")
    if matrix is not None and all(s in classes for s in SUBTYPES):
        at = [classes.index(s) for s in SUBTYPES]
        block = np.asarray(matrix, dtype=np.float64)[np.ix_(at, at)]
        if block.sum() > 0:
            found["subtype_accuracy"] = Reference(float(np.trace(block) / block.sum()), int(block.sum()))
    return found


def _cases(cells: Sequence[Reviewed]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per measure: which cells are in its denominator, and in which of those the model was right."""
    labels = np.array([c.label for c in cells], dtype=object)
    truth = np.array([c.verdict for c in cells], dtype=object)
    pneumonia = truth != NORMAL
    called_pneumonia = labels != NORMAL
    subtyped = np.isin(truth, SUBTYPES) & np.isin(labels, SUBTYPES)
    return {"sensitivity": (pneumonia, called_pneumonia),
            "specificity": (~pneumonia, ~called_pneumonia),
            "subtype_accuracy": (subtyped, labels == truth)}


def bootstrap_weights(counts: np.ndarray, stratum: np.ndarray, inclusion: np.ndarray,
                      tasks_per_stratum: Mapping[str, float], resamples: int, seed: int) -> np.ndarray:
    """The predictions each cell stands for, shape ``(1 + resamples, cells)``: row 0 as reviewed, then stratified
    bootstrap resamples of the reviewed tasks. ``counts``: reviewed tasks per cell; ``stratum``: each cell's index in
    :data:`STRATA`; ``inclusion``: its inclusion probability. Each task weighs ``1 / inclusion``, and each stratum's
    weights are scaled up to all of its tasks (``tasks_per_stratum``: reviewed or not)."""
    rng = np.random.default_rng(seed)
    draws = np.tile(counts, (1 + resamples, 1))
    for index in range(len(STRATA)):
        members = np.flatnonzero(stratum == index)
        if len(members):
            total = int(counts[members].sum())
            draws[1:, members] = rng.multinomial(total, counts[members] / total, size=resamples)
    weights = draws * (1.0 / inclusion)
    for index, name in enumerate(STRATA):
        members = stratum == index
        if members.any():
            total = weights[:, members].sum(axis=1, keepdims=True)
            weights[:, members] *= float(tasks_per_stratum.get(name, 0.0)) / np.where(total > 0, total, 1)
    return weights


def estimate(reviewed: Mapping[Reviewed, int], tasks_per_stratum: Mapping[str, float],
             reference: Mapping[str, Reference] | None = None, *, confidence: float = DEFAULT_CONFIDENCE,
             resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict:
    """The measures on the site's patients for one model.

    ``reviewed``: how many of its tasks with a settled verdict fall in each cell (tasks alike in stratum,
    inclusion, label and verdict are interchangeable, so a table of any size is a handful of cells).
    ``tasks_per_stratum``: for each stratum, the predictions its tasks stand for, the sum of ``1 / inclusion``
    over every task of the stratum that is not withdrawn, reviewed or not. ``reference``: the model's own
    figures (:func:`reference_figures`).
    """
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError("confidence must be in (0, 1) and resamples >= 1")
    cells = sorted(c for c, n in reviewed.items() if n > 0)
    counts = np.array([reviewed[c] for c in cells], dtype=np.float64)
    stratum = np.array([STRATA.index(c.stratum) for c in cells], dtype=np.int64)
    weights = bootstrap_weights(counts, stratum, np.array([c.inclusion for c in cells]), tasks_per_stratum,
                                resamples, seed)
    tail = (1 - confidence) / 2 * 100
    measures = {}
    sampled = stratum == STRATA.index(QUALITY_CONTROL)
    subtyping = any(c.label in SUBTYPES for c in cells)  # a two-class model (normal, pneumonia) has no sub-type call
    for name, (cases, correct) in _cases(cells).items():
        if name == "subtype_accuracy" and not subtyping:
            continue
        n = int(counts[cases].sum())
        figure = {"cases": n, "from_quality_control": int(counts[cases & sampled].sum())}
        if reference and name in reference:
            figure.update(model_figure=round(reference[name].figure, 4), model_cases=reference[name].cases,
                          model_figure_lower=round(reference[name].lower, 4))
        if n < MIN_CASES:
            measures[name] = {**figure, "estimate": None, "note": f"fewer than {MIN_CASES} reviewed cases"}
            continue
        if tasks_per_stratum.get(QUALITY_CONTROL, 0.0) > 0 and figure["from_quality_control"] < MIN_CASES:
            measures[name] = {**figure, "estimate": None,
                              "note": f"fewer than {MIN_CASES} quality-control cases (the sample standing for the "
                                      "predictions nobody referred)"}
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            values = (weights[:, cases] * correct[cases]).sum(axis=1) / weights[:, cases].sum(axis=1)
        kept = values[1:][~np.isnan(values[1:])]
        low, high = np.percentile(kept, [tail, 100 - tail])
        figure.update(estimate=round(float(values[0]), 4), interval=[round(float(low), 4), round(float(high), 4)])
        if "model_figure" in figure:
            figure["below_model_figure"] = bool(high < reference[name].lower)
        measures[name] = figure
    below = [name for name, f in measures.items() if f.get("below_model_figure")]
    return {"measures": measures, "below_model_figure": below, "reviewed": int(counts.sum()),
            "predictions_represented": round(float(sum(tasks_per_stratum.get(s, 0.0) for s in STRATA)), 1),
            "confidence": confidence, "resamples": resamples, "seed": seed,
            "method": "Horvitz-Thompson weights (1 / inclusion probability, scaled per stratum to its unreviewed "
                      "tasks), stratified bootstrap over reviewed tasks, percentile interval"}
