"""A site's threshold adopted: the registry entry that serves a trained model at another threshold (pure).

``cxr status`` shows the threshold a site's review verdicts call for (``lambdas.domain.site_threshold``), and
``cxr models adopt-threshold`` adopts it. Nothing is retrained and no artifact is written: the amendment is a
new package of the same ``model.tar.gz`` (same digest, same serving copy) whose container environment holds
the threshold (:data:`THRESHOLD_VARIABLE`, which ``training_job/decision.py`` puts in force at load). So it is
registered, approved, served and rolled back like any package, and every answer names the threshold it used.

What it is judged on. Its answers on the dataset's benchmark set are the trained package's own p(pneumonia),
called at the new threshold (:func:`answers_at`; the call is ``p >= threshold`` as ``decision.predict``
makes it). The amendment waits as ``PendingManualApproval`` beside the paired test of those answers against
the trained package's: a person promotes it (``cxr models promote``), having read what it costs on the
benchmark set, since the site's verdicts and the benchmark set are different patients.

What it is measured against once it serves. Its answers carry their own model id (:func:`served_model_id`), so
the site's verdicts on it are tallied apart from the model's own; its ``metrics.json`` (:func:`figures`) holds
its benchmark-set figures at its threshold under that id, and the model's own band, which the site's next
threshold may not leave (:func:`bands`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

from lambdas.domain import promotion

THRESHOLD_VARIABLE = "CXR_DECISION_THRESHOLD"
"""Read by ``training_job/decision.py`` (``THRESHOLD_VARIABLE``) in the serving container."""
AMENDS = "cxr:amends"
"""Metadata: the run id of the trained package whose artifact an amendment serves."""
THRESHOLD = "cxr:threshold"
MODEL_THRESHOLD = "cxr:model-threshold"
MODEL_NAME = "cxr:model-name"
"""Metadata: the SageMaker model an amendment deploys as. A SageMaker model's environment cannot change, and
the deploy step takes an existing name as a retried attempt, so the name carries the threshold."""
DECISION = "threshold-adopted"
MODEL_BAND = "model_band"
"""In an amendment's ``metrics.json``: the model's own referral band, which the site's threshold for the amended
model may not leave (the container refuses it there), though the tasks' band follows the adopted threshold."""
MAX_MODEL_NAME = 63


class NotAdoptable(ValueError):
    """The threshold cannot be served by this model: no binary view, or outside its referral band."""


def milli(threshold: float) -> int:
    """The threshold in thousandths (``site_threshold.DECIMALS``), the unit names are made of."""
    return round(threshold * 1000)


def servable(decision: Mapping) -> bool:
    """Whether the artifact whose ``metrics.json`` rule this is can serve an adopted threshold: its handler reads
    the variable, and says so (``decision.Rule.describe``)."""
    return decision.get("threshold_variable") == THRESHOLD_VARIABLE


def check(threshold: float, decision: Mapping) -> float:
    """The threshold, if the model's recorded rule (``metrics.json`` ``decision``) names the variable its handler
    reads and has the threshold inside its referral band, the same test ``decision.adopt_threshold`` makes as the
    model loads."""
    band = decision.get("band")
    if decision.get("threshold") is None or not band:
        raise NotAdoptable("this model records no binary threshold and band: it has no threshold to replace")
    if not servable(decision):
        raise NotAdoptable(f"this model was trained before its artifact could serve an adopted threshold (its "
                           f"decision rule names no threshold_variable {THRESHOLD_VARIABLE}): its handler would "
                           "answer at its own threshold while the registry said otherwise; train it again, then "
                           "adopt")
    low, high = (float(x) for x in band)
    if not (math.isfinite(threshold) and 0 < threshold < 1 and low <= threshold <= high):
        raise NotAdoptable(f"threshold {threshold} lies outside the model's referral band [{low:.3f}, {high:.3f}]: "
                           "beyond it the model would decide unreferred cases no verdict has judged; a site that "
                           "needs more needs a model trained for it")
    if milli(threshold) == milli(float(decision["threshold"])):
        raise NotAdoptable(f"threshold {threshold} is the model's own ({decision['threshold']}): nothing to adopt "
                           "(where an adopted threshold serves, `cxr models rollback` returns to it)")
    return threshold


def served_model_id(model_id: str, threshold: float) -> str:
    """The id its answers give (``decision.adopt_threshold`` makes the same): the model at another threshold is
    another operating point, so the site's verdicts on it are tallied apart from the model's own."""
    return f"{model_id}-t{milli(threshold):03d}"


def run_id(base_run: str, threshold: float) -> str:
    return f"{base_run}-threshold-{milli(threshold):03d}"


def model_name(training_job: str, threshold: float) -> str:
    """The training job's name (the stage's prefix first, as the deploy role's policy requires) with the
    threshold: one SageMaker model per artifact and threshold."""
    suffix = f"-t{milli(threshold):03d}"
    return training_job[:MAX_MODEL_NAME - len(suffix)] + suffix


def answers_at(answers: Mapping, threshold: float) -> dict:
    """The trained package's benchmark answers called at ``threshold``. ``referred`` is left out: it also
    holds the guard's and the label's reasons, which the answers do not separate from the band's."""
    return {**answers, "threshold": threshold, "records": [
        {key: value for key, value in record.items() if key != "referred"}
        | {"called": float(record["score"]) >= threshold} for record in answers.get("records", [])]}


def figures(amended: Mapping, model_id: str, threshold: float, decision: Mapping) -> dict:
    """The amendment's ``metrics.json``: its binary figures on the benchmark set at its threshold (the only
    labelled images whose p(pneumonia) the registry holds), under the id its answers give, so that ``cxr status``
    and the FieldMonitor compare the site's verdicts on it with figures measured at the same threshold; and the
    model's own threshold and band (``decision``, its ``metrics.json`` rule), the limit of any later move."""
    cells = Counter((bool(r["truth"]), bool(r["called"])) for r in amended["records"])
    tn, fp, fn, tp = (cells[(truth, called)] for truth in (False, True) for called in (False, True))
    n = tn + fp + fn + tp
    return {"model_id": served_model_id(model_id, threshold), "evaluated_on": f"benchmark set {amended['version']}",
            "n": n, "threshold": threshold, "model_threshold": decision["threshold"],
            MODEL_BAND: [float(x) for x in decision["band"]], "binary": {
                "positive": "pneumonia", "n": n, "accuracy": (tp + tn) / n if n else None,
                "sensitivity": tp / (tp + fn) if tp + fn else None, "specificity": tn / (tn + fp) if tn + fp else None,
                "confusion_matrix": [[tn, fp], [fn, tp]]}}


def bands(metrics: Mapping) -> dict[str, tuple[float, float]]:
    """``{model id: the model's own band}`` from an amendment's ``metrics.json``; empty for a trained model's."""
    band = metrics.get(MODEL_BAND)
    return {metrics["model_id"]: (float(band[0]), float(band[1]))} if band and metrics.get("model_id") else {}


def metadata(base: Mapping, threshold: float, model_threshold: float, report_uri: str,
             answers_uri: str | None) -> dict:
    """The amendment's ``CustomerMetadataProperties``: the trained package's, with its own run, report, answers,
    decision and model name, and what it amends."""
    meta = dict(base)
    for key in (promotion.APPROVED_AT, promotion.BENCHMARK_ANSWERS):
        meta.pop(key, None)
    if answers_uri:
        meta[promotion.BENCHMARK_ANSWERS] = answers_uri
    base_run = meta[promotion.RUN_ID]
    meta.update({promotion.RUN_ID: run_id(base_run, threshold), AMENDS: base_run, promotion.REPORT: report_uri,
                 promotion.DECISION: DECISION,
                 THRESHOLD: f"{threshold:.3f}", MODEL_THRESHOLD: f"{model_threshold:.6g}",
                 MODEL_NAME: model_name(meta[promotion.TRAINING_JOB], threshold)})
    values = {key: promotion.metadata_value(value) for key, value in meta.items()}
    problems = promotion.metadata_problems(values)
    if problems:
        raise ValueError("CustomerMetadataProperties SageMaker would refuse: " + "; ".join(problems))
    return values
