"""A simulated site for the field-performance tests: predictions with the truth a reviewer would give, and the
review table the predict path and the reviewers would leave for them."""

from __future__ import annotations

import numpy as np

from lambdas.domain import review, site_threshold

LABELS = ("normal", "bacterial", "viral")


def population(n: int, specificity: float, seed: int = 0) -> list[dict]:
    """Predictions with the truth a reviewer would give; the model's errors are the ones it tends to refer."""
    rng = np.random.default_rng(seed)
    found = []
    for i in range(n):
        truth = LABELS[rng.choice(3, p=[0.4, 0.4, 0.2])]
        if truth == "normal":
            label = "normal" if rng.random() < specificity else "viral"
        else:
            label = truth if rng.random() < 0.8 else ("bacterial" if truth == "viral" else "viral")
            label = label if rng.random() < 0.95 else "normal"
        referred = rng.random() < (0.6 if label != truth else 0.05)
        found.append({"i": i, "truth": truth, "label": label, "referred": referred})
    return found


def true_measures(found: list[dict]) -> dict[str, float]:
    normals = [p for p in found if p["truth"] == "normal"]
    pneumonias = [p for p in found if p["truth"] != "normal"]
    subtyped = [p for p in pneumonias if p["label"] != "normal"]
    return {"specificity": np.mean([p["label"] == "normal" for p in normals]),
            "sensitivity": np.mean([p["label"] != "normal" for p in pneumonias]),
            "subtype_accuracy": np.mean([p["label"] == p["truth"] for p in subtyped])}


def review_items(found: list[dict], rate: float, reviewed_share: float = 1.0, seed: int = 1, model_id: str = "m",
                 created_at: str = "2026-12-01T00:00:00.000+00:00") -> list[dict]:
    """The review table the predict path and reviewers would leave: tasks (referred, or sampled at ``rate``) and
    one verdict for each reviewed task."""
    rng = np.random.default_rng(seed)
    items = []
    for p in found:
        pk = f"t{p['i']}"
        reason = review.reason_to_review({"refer_to_radiologist": p["referred"]}, pk, rate)
        if reason is None:
            continue
        done = rng.random() < reviewed_share
        items.append({"pk": f"{model_id}-{pk}", "sk": "task", "reason": reason, "label": p["label"],
                      "model_id": model_id, "created_at": created_at,
                      "status": review.REVIEWED if done else review.OPEN,
                      **({"sample_rate": rate} if reason == review.QUALITY_CONTROL else {})})
        if done:
            items.append({"pk": f"{model_id}-{pk}", "sk": "verdict#r1", "verdict": p["truth"]})
    return items


def scored_population(n: int, threshold: float, margin: float, normal_mean: float = -3.0,
                      pneumonia_mean: float = 3.0, spread: float = 1.5, seed: int = 0) -> dict:
    """A site seen through p(pneumonia): log-odds normal around ``normal_mean`` (normals) and ``pneumonia_mean``,
    the model's ``threshold`` and its referral band (``margin`` log-odds either side; every prediction inside it is
    referred, as ``decision.decide_all`` refers it)."""
    rng = np.random.default_rng(seed)
    pneumonia = rng.random(n) < 0.7
    logits = np.where(pneumonia, pneumonia_mean, normal_mean) + spread * rng.standard_normal(n)
    centre = np.log(threshold / (1 - threshold))
    band = [float(1 / (1 + np.exp(-(centre - margin)))), float(1 / (1 + np.exp(-(centre + margin))))]
    return {"probability": 1 / (1 + np.exp(-logits)), "pneumonia": pneumonia, "threshold": threshold, "band": band,
            "referred": np.abs(logits - centre) < margin}


def true_rates(site: dict, threshold: float) -> tuple[float, float]:
    """The site's sensitivity and specificity at ``threshold``, every prediction counted once."""
    called = np.round(site["probability"], site_threshold.DECIMALS) >= round(threshold, site_threshold.DECIMALS)
    return float(called[site["pneumonia"]].mean()), float((~called[~site["pneumonia"]]).mean())


def scored_review_items(site: dict, rate: float, model_id: str = "m", reviewed_share: float = 1.0,
                        seed: int = 1, created_at: str = "2026-12-01T00:00:00.000+00:00") -> list[dict]:
    """The review table for a scored site: tasks with p(pneumonia), the threshold and band, and their verdicts."""
    rng = np.random.default_rng(seed)
    items = []
    for i, (p, sick, referred) in enumerate(zip(site["probability"], site["pneumonia"], site["referred"], strict=True)):
        pk = f"{model_id}-t{i}"
        reason = review.reason_to_review({"refer_to_radiologist": bool(referred)}, pk, rate)
        if reason is None:
            continue
        done = rng.random() < reviewed_share
        items.append({"pk": pk, "sk": "task", "reason": reason, "model_id": model_id,
                      "label": "pneumonia" if p >= site["threshold"] else "normal", "pneumonia_probability": float(p),
                      "threshold": site["threshold"], "referral_band": site["band"],
                      "created_at": created_at, "status": review.REVIEWED if done else review.OPEN,
                      **({"sample_rate": rate} if reason == review.QUALITY_CONTROL else {})})
        if done:
            items.append({"pk": pk, "sk": "verdict#r1", "verdict": review.UNSPECIFIED if sick else "normal"})
    return items
