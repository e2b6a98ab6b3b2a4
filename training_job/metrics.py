"""Classification metrics (scikit-learn), calibration and decision thresholds.

One function, :func:`classification_metrics`, produces the ``metrics.json`` schema; training,
``cxr evaluate`` and the benchmarks all call it, so their figures cannot disagree.
"""

from __future__ import annotations

import numpy as np
from decision import DEFAULT_THRESHOLD, NORMAL, Rule, decide_all, pneumonia_probability, probabilities
from sklearn import metrics as skm

ECE_BINS = 15


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict]:
    """Per confidence bin: count, mean confidence, accuracy (the reliability diagram's data)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lo) & (confidence <= hi)
        out.append({
            "low": float(lo), "high": float(hi), "count": int(inside.sum()),
            "confidence": float(confidence[inside].mean()) if inside.any() else None,
            "accuracy": float(correct[inside].mean()) if inside.any() else None,
        })
    return out


def negative_log_likelihood(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean -log p(true class), the quantity temperature fitting minimises."""
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, classes: list[str],
                    prior: dict[str, float] | None = None) -> float:
    """Temperature minimising the validation negative log-likelihood of the probabilities served
    (with the sub-type prior, when there is one): golden-section search on log T."""
    logits = np.asarray(logits, dtype=np.float64)

    def nll(log_t: float) -> float:
        return negative_log_likelihood(probabilities(logits, classes, float(np.exp(log_t)), prior), y)

    lo, hi = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


def choose_threshold(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> float | None:
    """Binary threshold on p(pneumonia) from validation (Youden's J), or None to keep the default (0.5).

    Kept only when it beats the default's balanced accuracy on validation by a margin larger than one
    image per class can explain: a saturated validation split pins a threshold down poorly.
    """
    if NORMAL not in classes:
        return None
    is_pneumonia = (y != classes.index(NORMAL)).astype(int)
    if is_pneumonia.min() == is_pneumonia.max():
        return None
    score = pneumonia_probability(probs, classes)
    fpr, tpr, thresholds = skm.roc_curve(is_pneumonia, score)
    best = int(np.argmax(tpr - fpr))
    threshold = float(min(thresholds[best], 1.0))

    def balanced(pred_pneumonia: np.ndarray) -> float:
        return skm.balanced_accuracy_score(is_pneumonia, pred_pneumonia.astype(int))

    gain = balanced(score >= threshold) - balanced(score >= DEFAULT_THRESHOLD)
    resolution = 1.0 / min(int(is_pneumonia.sum()), int((1 - is_pneumonia).sum()))
    # 0 or 1 would call every image one class, and leave no log-odds band around it to refer
    return threshold if gain > resolution and 0.0 < threshold < 1.0 else None


def sensitivity_threshold(sets: list[tuple[np.ndarray, np.ndarray]], min_sensitivity: float = 0.95) -> float | None:
    """The highest threshold on p(pneumonia) that keeps sensitivity >= ``min_sensitivity`` on every
    ``(score, is_pneumonia)`` set, e.g. the proxies of bench/proxies.py, or None if a set has no pneumonia.

    Sensitivity only falls and specificity only rises as the threshold rises, so this one threshold
    gives every set its highest specificity at that sensitivity: the operating point for specificity
    under shift (issue 21), where Youden's J on an easy split (:func:`choose_threshold`) gives it away.
    """
    if not 0 < min_sensitivity <= 1:
        raise ValueError("min_sensitivity must be in (0, 1]")
    chosen = []
    for score, truth in sets:
        positives = np.sort(np.asarray(score, dtype=np.float64)[np.asarray(truth).astype(bool)])[::-1]
        if not len(positives):
            return None
        needed = int(np.ceil(min_sensitivity * len(positives) - 1e-9))  # pneumonias that must score >= t
        chosen.append(positives[max(needed, 1) - 1])
    return float(min(chosen)) if chosen else None


def operating_point(score: np.ndarray, truth: np.ndarray, threshold: float | None) -> dict:
    """Binary ACC, sensitivity and specificity when ``score >= threshold`` calls pneumonia (``truth``: is
    pneumonia); only the threshold when there is none, specificity None when there are no normals."""
    if threshold is None:
        return {"threshold": None}
    score, truth = np.asarray(score), np.asarray(truth).astype(bool)
    called = score >= threshold
    return {"threshold": float(threshold), "accuracy": float((called == truth).mean()),
            "sensitivity": float(called[truth].mean()),
            "specificity": float((~called[~truth]).mean()) if (~truth).any() else None}


def at_sensitivity(score: np.ndarray, truth: np.ndarray, min_sensitivity: float = 0.95) -> dict:
    """:func:`operating_point` at this one set's own :func:`sensitivity_threshold`: its ``specificity`` is the
    threshold-free "specificity at sensitivity >= 0.95" that the worst-proxy rule of issue 21 ranks recipes by."""
    truth = np.asarray(truth).astype(bool)
    return operating_point(score, truth, sensitivity_threshold([(np.asarray(score), truth)], min_sensitivity))


def choose_operating_point(probs: np.ndarray, y: np.ndarray, classes: list[str],
                           min_sensitivity: float = 0.95) -> float | None:
    """:func:`sensitivity_threshold` on one labelled split (validation), for ``--threshold-rule sensitivity``."""
    if NORMAL not in classes:
        return None
    return sensitivity_threshold([(pneumonia_probability(probs, classes), y != classes.index(NORMAL))],
                                 min_sensitivity)


def _auc(y_binary: np.ndarray, score: np.ndarray) -> float | None:
    return float(skm.roc_auc_score(y_binary, score)) if 0 < y_binary.sum() < len(y_binary) else None


def classification_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str], rule: Rule | None = None) -> dict:
    """The ``metrics.json`` body: accuracy, per-class P/R/F1, macro-F1, confusion matrix, ROC-AUC,
    ECE, the ``decision`` rule with its referrals, and a ``binary`` (pneumonia vs normal) section
    whenever there is a normal class. ``rule``: the model's (default: threshold 0.5, default margin)."""
    y = np.asarray(y, dtype=int)
    rule = rule or Rule.for_classes(classes)
    decided = decide_all(probs, classes, rule)
    pred = decided.index
    labels = list(range(len(classes)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    present = sorted(set(y.tolist()))
    out: dict = {
        "n": len(y),
        "classes": classes,
        "accuracy": float(skm.accuracy_score(y, pred)),
        # mean recall over the classes present, as sklearn defines it, without its warning when a
        # folder lacks a class the model can predict (e.g. the 16 samples have no viral X-ray)
        "balanced_accuracy": float(np.mean(recall[present])) if len(present) > 1 else None,
        "macro_f1": float(skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
        "roc_auc": None,
        "ece": expected_calibration_error(probs, y),
        "threshold": rule.threshold,
        "decision": referral_metrics(pred == y, decided, rule),
    }
    if len(classes) == 2:
        out["roc_auc"] = _auc((y == 1).astype(int), probs[:, 1])
    elif len(present) == len(classes):
        out["roc_auc"] = float(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=labels))
    if NORMAL in classes:
        normal = classes.index(NORMAL)
        out["binary"] = binary_metrics(y != normal, pneumonia_probability(probs, classes), pred != normal)
    return out


def referral_metrics(correct: np.ndarray, decided, rule: Rule) -> dict:
    """How often the rule refers, why, and how accurate the labels it lets through are (``coverage``:
    the share decided without a radiologist, which the quality gate can hold to a minimum)."""
    refer = decided.refer
    kept = ~refer
    return {
        **rule.describe(),
        "referred": int(refer.sum()),
        "referral_rate": float(refer.mean()) if len(refer) else None,
        "coverage": float(kept.mean()) if len(refer) else None,
        "unreferred_accuracy": float(np.asarray(correct)[kept].mean()) if kept.any() else None,
        "reasons": {name: int(fired.sum()) for name, fired in decided.reasons.items()},
    }


def binary_metrics(truth: np.ndarray, score: np.ndarray, called: np.ndarray) -> dict:
    """Pneumonia (any sub-type) against normal: what the literature and the quality gate compare."""
    truth, called = np.asarray(truth).astype(int), np.asarray(called).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(truth, called, labels=[0, 1]).ravel()
    return {
        "positive": "pneumonia",
        "n": len(truth),
        "accuracy": float((tp + tn) / len(truth)),
        "roc_auc": _auc(truth, np.asarray(score)),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else None,
        "specificity": float(tn / (tn + fp)) if tn + fp else None,
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }
