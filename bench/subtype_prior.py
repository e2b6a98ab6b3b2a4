"""Does re-weighting the pneumonia sub-types by their training mix (``decision.py``) lift accuracy?

Usage: ``python bench/subtype_prior.py RUN_DIR... [--json FILE]`` where the first RUN_DIR is a ``cxr
train-local --out`` folder of a three-class model and every other one a model trained on the same
split (its ``work/channels`` are used for all). Each run's validation and test-split logits are
scored twice, without and with the sub-type prior of its own training split, the temperature
refitted on validation each time and the model's threshold rule re-chosen, exactly as training
does. Prints accuracy and negative log-likelihood per run and the mean change.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from ensemble import VIEWS, data, decision, logits, shared_channels  # noqa: E402

from cxr import jobcode  # noqa: E402

metrics = jobcode.load("metrics")


def score(val: tuple, test: tuple, classes: list[str], prior: dict | None) -> dict:
    (zv, yv), (zt, yt) = val, test
    temperature = metrics.fit_temperature(zv, yv, classes, prior)
    pv, pt = (decision.probabilities(z, classes, temperature, prior) for z in (zv, zt))
    threshold = metrics.choose_threshold(pv, yv, classes)
    return {
        "temperature": temperature, "threshold": threshold,
        "validation_accuracy": float((decision.predict(pv, classes, threshold) == yv).mean()),
        "test_accuracy": float((decision.predict(pt, classes, threshold) == yt).mean()),
        "test_nll": metrics.negative_log_likelihood(pt, yt),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    channels = shared_channels(args.runs)
    result = {}
    for run in args.runs:
        val_z, val_y, config = logits(run / "model", channels / "validation", VIEWS[:1])
        test_z, test_y, _ = logits(run / "model", channels / "test", VIEWS[:1])
        classes = config["classes"]
        counts = collections.Counter(record["label"] for record in data.read_records(channels / "train"))
        prior = decision.subtype_prior({label: counts[label] for label in classes})
        if prior is None:
            raise SystemExit(f"{run}: not a model with pneumonia sub-types")
        result[str(run)] = {"prior": prior, "without": score((val_z, val_y), (test_z, test_y), classes, None),
                            "with": score((val_z, val_y), (test_z, test_y), classes, prior)}
    changes = {key: [r["with"][key] - r["without"][key] for r in result.values()]
               for key in ("validation_accuracy", "test_accuracy", "test_nll")}
    summary = {key: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
               for key, v in changes.items()}
    text = json.dumps({"runs": result, "change_with_prior": summary}, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
