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
from .review import NOT_ASSESSABLE, OPEN, QUALITY_CONTROL, REFERRED, TASK_SORT_KEY, VERDICT_PREFIX, VERDICTS, WITHDRAWN

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
    base = np.array([1.0 / c.inclusion for c in cells], dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = np.tile(counts, (1 + resamples, 1))  # row 0: the tasks as reviewed; then resamples of the tasks
    for index in range(len(STRATA)):
        members = np.flatnonzero(stratum == index)
        if len(members):
            total = int(counts[members].sum())
            draws[1:, members] = rng.multinomial(total, counts[members] / total, size=resamples)
    weights = draws * base
    for index, name in enumerate(STRATA):  # each stratum stands for all of its tasks, reviewed or not
        members = stratum == index
        if members.any():
            total = weights[:, members].sum(axis=1, keepdims=True)
            weights[:, members] *= float(tasks_per_stratum.get(name, 0.0)) / np.where(total > 0, total, 1)
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


class Tally:
    """Reads a review table's items once (``cxr.reviews`` streams them) into counters: per model, the strata's
    task weights and the reviewed tasks' cells, so memory does not grow with the table.

    A task's verdicts are settled when the scan moves on from its item collection: a sequential Scan reads a
    partition key's items together, in sort-key order (``task`` before ``verdict#...``). Items read apart from
    their task (any other order) wait until the end, with the record of every task whose status says it has
    verdicts but whose verdicts were not read with it.
    """

    def __init__(self, default_sample_rate: float):
        self.default_sample_rate = default_sample_rate
        self.weight: dict[str | None, dict[str, float]] = {}
        self.latest: dict[str, str] = {}
        """Each model's newest task (its ``created_at``): which models are still predicting."""
        self.cells: dict[str | None, dict[Reviewed, int]] = {}
        self._open: tuple[str, dict | None, list[str]] | None = None  # the item collection being read
        self._orphans: dict[str, dict] = {}  # reviewed tasks read without their verdicts
        self._loose: dict[str, list[str]] = {}  # verdicts read without their task

    def add(self, item: Mapping) -> None:
        """A task item (``sk`` ``task``) or a verdict item (``verdict#...``); anything else is ignored."""
        pk = item["pk"]
        if self._open is not None and self._open[0] != pk:
            self._close()
        if item["sk"] == TASK_SORT_KEY:
            record = self._task(item)
            self._open = (pk, record, [])
        elif item["sk"].startswith(VERDICT_PREFIX):
            if self._open is not None and self._open[0] == pk and self._open[1] is not None:
                self._open[2].append(item["verdict"])
            else:
                self._loose.setdefault(pk, []).append(item["verdict"])

    def _task(self, item: Mapping) -> dict | None:
        """Count the task's weight in its stratum; its record, or None when it counts nowhere (withdrawn)."""
        model = item.get("model_id")
        if item.get("created_at") and item["created_at"] > self.latest.get(str(model), ""):
            self.latest[str(model)] = item["created_at"]
        if item.get("status") == WITHDRAWN or item.get("reason") not in STRATA:
            return None
        rate = item.get("sample_rate", self.default_sample_rate)
        p = inclusion(item["reason"], rate if item["reason"] == QUALITY_CONTROL else None)
        self.weight.setdefault(model, dict.fromkeys(STRATA, 0.0))[item["reason"]] += 1.0 / p
        return {"model_id": model, "stratum": item["reason"], "inclusion": p, "label": item["label"],
                "status": item.get("status")}

    def _close(self) -> None:
        pk, record, verdicts = self._open
        self._open = None
        if record is None:
            return
        if verdicts:
            self._count(record, verdicts)
        elif record["status"] not in (OPEN, None):  # its verdicts are elsewhere in the scan
            self._orphans[pk] = record

    def _count(self, record: dict, verdicts: list[str]) -> None:
        verdict = settled(verdicts)
        if verdict is None:
            return
        cell = Reviewed(record["stratum"], record["inclusion"], record["label"], verdict)
        cells = self.cells.setdefault(record["model_id"], {})
        cells[cell] = cells.get(cell, 0) + 1

    def estimates(self, references: Mapping[str, Mapping[str, Reference]] | None = None) -> dict[str, dict]:
        """:func:`estimate` for every model with a reviewed task, against ``references[model_id]`` where given."""
        if self._open is not None:
            self._close()
        for pk, record in list(self._orphans.items()):
            if pk in self._loose:
                self._count(record, self._loose[pk])
        self._orphans, self._loose = {}, {}
        references = references or {}
        return {str(model): estimate(cells, self.weight[model], references.get(model))
                for model, cells in sorted(self.cells.items(), key=lambda kv: str(kv[0]))}
