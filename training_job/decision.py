"""How the network's logits become what a user is told: class probabilities and one label.

Training (validation choices, ``metrics.json``), ``cxr evaluate``, the benchmarks and the endpoint
handler (this file ships in ``code/`` beside ``inference.py``) all call these functions, so every
figure describes the decisions actually served. Plain numpy: the endpoint has no torch.

Each step's parameter is recorded in ``model.json``:

1. ``temperature``: ``softmax(logits / T)``, T fitted on validation (calibration).
2. ``subtype_prior``: training weights the loss by class (``class-weighting balanced``, the
   default; an unweighted loss gets none), so the network ranks pneumonia sub-types as if they
   were equally common. The probability of pneumonia is kept as it is, and its split
   between sub-types is re-weighted by their mix in the training split (Bayes' rule), since
   bacterial pneumonia is about twice as common as viral. On eight Kermany runs
   (``bench/subtype_prior.py``): test-split three-class accuracy +1.2 points on average (-0.1 to
   +2.3), log-likelihood better in all eight. Normal vs pneumonia keeps the balanced view: a prior
   on it too cost specificity on normals from an unseen acquisition (``bench/RESULTS.md``).
3. ``threshold`` on p(pneumonia), chosen on validation where it helps; else 0.5.
4. ``referral_margin``: the one referral rule, :func:`decide` (a training hyperparameter).

A label is never given quietly against its own probabilities: the case is referred to a radiologist
when p(pneumonia) is within ``referral_margin`` of the threshold in log-odds (``near_threshold``),
when the label is not the most probable class (``label_not_most_probable``: the threshold called
pneumonia while normal is the most probable class, or the reverse), or when the caller found the
input unlike the training data (``out_of_distribution``). The band is derived from the model's own
threshold, so it always contains it: a band fixed apart from the threshold let a model fitted at
0.163 label a film ``bacterial`` at p(normal) 0.807 without referral.

A site may serve the model at its own threshold (``cxr models adopt-threshold``: the threshold its review
verdicts call for, ``lambdas/domain/site_threshold.py``). The registry then serves the same artifact with
:data:`THRESHOLD_VARIABLE` in the container's environment, and :func:`adopt_threshold` puts it in force
in place of step 3; the band and every referral follow it as they follow the model's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NORMAL = "normal"
DEFAULT_THRESHOLD = 0.5
"""Models that record no threshold (none fitted on validation, or no normal class to fit it on)."""
DEFAULT_MARGIN = math.log(4)
"""Refer while the odds of pneumonia are within a factor of 4 of the threshold's odds: at threshold
0.5 exactly the band [0.2, 0.8] the project referred on before the band followed the threshold."""
NEAR_THRESHOLD, LABEL_NOT_MOST_PROBABLE, OUT_OF_DISTRIBUTION = (
    "near_threshold", "label_not_most_probable", "out_of_distribution")
REASONS = (NEAR_THRESHOLD, LABEL_NOT_MOST_PROBABLE, OUT_OF_DISTRIBUTION)
THRESHOLD_VARIABLE = "CXR_DECISION_THRESHOLD"
"""A site's adopted threshold, in the serving container's environment (``lambdas.domain.threshold_amendment``)."""
RULE = ("refer when |logit(p(pneumonia)) - logit(threshold)| < margin (without a normal class: the log-odds of "
        "the two most probable classes), when the label is not the most probable class, or when the input is "
        "out of distribution")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def subtype_prior(counts: dict[str, int]) -> dict[str, float] | None:
    """Each pneumonia sub-type's share of the training split's pneumonias; None without two sub-types."""
    subtypes = {label: n for label, n in counts.items() if label != NORMAL}
    total = sum(subtypes.values())
    if len(subtypes) < 2 or NORMAL not in counts or min(subtypes.values()) <= 0:
        return None
    return {label: n / total for label, n in subtypes.items()}


def probabilities(logits: np.ndarray, classes: list[str], temperature: float = 1.0,
                  prior: dict[str, float] | None = None) -> np.ndarray:
    """Calibrated probabilities for logits of shape (n, classes) or (classes,)."""
    probs = softmax(logits, temperature)
    if not prior:
        return probs
    columns = [classes.index(label) for label in prior]
    weighted = probs[..., columns] * np.array(list(prior.values()))
    pneumonia = probs[..., columns].sum(axis=-1, keepdims=True)
    probs = probs.copy()
    probs[..., columns] = pneumonia * weighted / weighted.sum(axis=-1, keepdims=True)
    return probs


def model_probabilities(logits: np.ndarray, config: dict) -> np.ndarray:
    """:func:`probabilities` with the parameters a trained model's ``model.json`` records."""
    return probabilities(logits, config["classes"], config["temperature"], config.get("subtype_prior"))


def pneumonia_probability(probs: np.ndarray, classes: list[str]) -> np.ndarray:
    """p(pneumonia) = 1 - p(normal): the binary view of a 3-class (or binary) model."""
    return 1.0 - probs[..., classes.index(NORMAL)]


def predict(probs: np.ndarray, classes: list[str], threshold: float | None = None) -> np.ndarray:
    """Class indices; with a binary ``threshold`` on p(pneumonia), normal wins below it.

    Above the threshold the most probable pneumonia class is taken, so a threshold changes only
    the normal-vs-pneumonia decision, never the bacterial-vs-viral one.
    """
    if threshold is None or NORMAL not in classes:
        return probs.argmax(axis=-1)
    normal = classes.index(NORMAL)
    others = probs.copy()
    others[..., normal] = -1.0
    return np.where(pneumonia_probability(probs, classes) >= threshold, others.argmax(axis=-1), normal)


@dataclass(frozen=True)
class Rule:
    """A model's decision parameters: ``threshold`` on p(pneumonia) (None without a normal class) and
    ``margin`` in log-odds around it."""

    threshold: float | None
    margin: float = DEFAULT_MARGIN

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be inside (0, 1), got {self.threshold}")
        if not (math.isfinite(self.margin) and self.margin > 0):
            raise ValueError(f"referral margin must be a positive number of log-odds, got {self.margin}")

    @classmethod
    def for_classes(cls, classes: list[str], threshold: float | None = None,
                    margin: float = DEFAULT_MARGIN) -> Rule:
        """With a normal class, a missing threshold is :data:`DEFAULT_THRESHOLD`."""
        if NORMAL not in classes:
            return cls(None, margin)
        return cls(DEFAULT_THRESHOLD if threshold is None else float(threshold), margin)

    @classmethod
    def of(cls, config: dict) -> Rule:
        """The rule a ``model.json`` records; models older than the margin get :data:`DEFAULT_MARGIN`."""
        return cls.for_classes(config["classes"], config.get("threshold"),
                               float(config.get("referral_margin", DEFAULT_MARGIN)))

    @property
    def band(self) -> tuple[float, float] | None:
        """The p(pneumonia) interval referred as ``near_threshold``; it contains the threshold (the
        ``min``/``max`` only absorb rounding at thresholds within a few ulps of 0 or 1)."""
        if self.threshold is None:
            return None
        centre = _logit(self.threshold)
        low, high = _sigmoid(centre - self.margin), _sigmoid(centre + self.margin)
        return min(low, self.threshold), max(high, self.threshold)

    def describe(self) -> dict:
        """The rule as ``metrics.json`` records it. ``threshold_variable`` tells the registry that this artifact's
        handler serves an adopted threshold (:func:`adopt_threshold`); an artifact older than that records none,
        and its handler would ignore the variable while the registry claimed it served."""
        return {"rule": RULE, "threshold": self.threshold, "margin": self.margin,
                "band": list(self.band) if self.band else None,
                "threshold_variable": THRESHOLD_VARIABLE if self.band else None}


def adopt_threshold(config: dict, threshold: str | float | None) -> dict:
    """``model.json`` with a site's ``threshold`` in force (None or "": the model's own, unchanged).

    Only a threshold inside the model's own referral band is taken: every prediction there was referred
    and read by a radiologist, so the verdicts that chose it saw those cases; outside it the model would
    call unreferred cases that no verdict has judged. The model's own threshold stays as
    ``model_threshold``, and the id gains the threshold in thousandths (``-t700``): answers at another
    threshold are another operating point, tallied apart (``lambdas.domain.threshold_amendment``)."""
    if threshold is None or threshold == "":
        return config
    value, rule = float(threshold), Rule.of(config)
    if rule.band is None:
        raise ValueError(f"{THRESHOLD_VARIABLE}={threshold}: this model has no normal class, so no threshold")
    low, high = rule.band
    if not low <= value <= high or not 0.0 < value < 1.0:
        raise ValueError(f"{THRESHOLD_VARIABLE}={threshold} lies outside the model's referral band "
                         f"[{low:.4f}, {high:.4f}] around its threshold {rule.threshold}")
    adopted = {**config, "threshold": value, "model_threshold": rule.threshold}
    if config.get("model_id"):
        adopted["model_id"] = f"{config['model_id']}-t{round(value * 1000):03d}"
    return adopted


@dataclass(frozen=True)
class Decisions:
    """Decisions for a batch: label indices and, per reason, which rows it refers."""

    index: np.ndarray
    reasons: dict[str, np.ndarray]

    @property
    def refer(self) -> np.ndarray:
        return np.logical_or.reduce(list(self.reasons.values()))


@dataclass(frozen=True)
class Decision:
    """What one X-ray is told: the label, its probability, and whether and why it goes to a radiologist."""

    label: str
    index: int
    confidence: float
    refer: bool
    reasons: list[str]
    threshold: float | None
    band: list[float] | None


def decide_all(probs: np.ndarray, classes: list[str], rule: Rule,
               out_of_distribution: np.ndarray | None = None) -> Decisions:
    """The decision rule on probabilities of shape (n, classes)."""
    probs = np.asarray(probs, dtype=np.float64)
    index = predict(probs, classes, rule.threshold)
    chosen = np.take_along_axis(probs, index[:, None], axis=-1)[:, 0]
    ood = np.zeros(len(probs), bool) if out_of_distribution is None else np.asarray(out_of_distribution, bool)
    return Decisions(index, {NEAR_THRESHOLD: distance_to_threshold(probs, classes, rule) < rule.margin,
                             LABEL_NOT_MOST_PROBABLE: chosen < probs.max(axis=-1),
                             OUT_OF_DISTRIBUTION: ood})


def distance_to_threshold(probs: np.ndarray, classes: list[str], rule: Rule) -> np.ndarray:
    """Log-odds between each row's p(pneumonia) and the threshold; without a normal class, between the two
    most probable classes (the argmax's own boundary)."""
    probs = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if rule.threshold is None:
            top = np.sort(probs, axis=-1)
            return np.log(top[:, -1]) - np.log(top[:, -2])
        return np.abs(_logit(pneumonia_probability(probs, classes)) - _logit(rule.threshold))


def decide(probs: np.ndarray, classes: list[str], config: dict, out_of_distribution: bool = False) -> Decision:
    """One X-ray's decision under the rule its model's ``config`` (``model.json``) records."""
    rule = Rule.of({**config, "classes": classes})
    made = decide_all(np.asarray(probs)[None], classes, rule, np.array([out_of_distribution]))
    index = int(made.index[0])
    reasons = [name for name in REASONS if made.reasons[name][0]]
    band = rule.band
    return Decision(classes[index], index, float(probs[index]), bool(reasons), reasons, rule.threshold,
                    list(band) if band else None)


def _logit(p):
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: float) -> float:
    return float(0.5 * (1.0 + math.tanh(z / 2)))
