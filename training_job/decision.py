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
3. ``threshold`` on p(pneumonia), chosen on validation where it helps; else the most probable class.
"""

from __future__ import annotations

import numpy as np

NORMAL = "normal"


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
