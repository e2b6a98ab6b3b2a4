"""Accuracy proxies for a trained model (the official test splits are held out and never used here).

Usage: ``python bench/accuracy.py RUN_DIR [--holdout-normals DIR]`` where RUN_DIR is a ``cxr
train-local --out`` folder. Prints one JSON object with:

* ``split_test``: ``metrics.json`` of the run (its patient-grouped test split, never seen in training);
* ``samples16``: the 16 bundled full-resolution X-rays (another acquisition and resolution);
* ``acquisition_holdout`` (with ``--holdout-normals``): normals from an acquisition group left out of
  training (e.g. the ``NORMAL2-IM-*`` files) scored together with the run's test-split pneumonias,
  the closest proxy we have for the shifted official test split;
* ``official_mix_estimate`` (three-class models): the test split's per-class recalls weighted by the
  official Kermany test split's published class counts (234 normal, 242 bacterial, 148 viral), since
  accuracy depends on the class mix; with ``--holdout-normals`` also a shifted variant that uses the
  unseen-acquisition specificity as the normal recall.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxr.commands.evaluate import evaluate  # noqa: E402

KEYS = ("n", "accuracy", "macro_f1", "roc_auc", "ece")
BINARY_KEYS = ("n", "accuracy", "roc_auc", "sensitivity", "specificity")
OFFICIAL_TEST_MIX = {"normal": 234, "bacterial": 242, "viral": 148}
"""Class counts of the official Kermany test split as published (the split itself is never read)."""


def brief(result: dict) -> dict:
    out = {k: result[k] for k in KEYS if k in result}
    if "binary" in result:
        out["binary"] = {k: result["binary"][k] for k in BINARY_KEYS if k in result["binary"]}
    return out


def mix_estimate(per_class: dict, normal_recall: float | None = None) -> float | None:
    """Accuracy the per-class recalls would give on the official split's class mix."""
    if set(per_class) != set(OFFICIAL_TEST_MIX):
        return None
    recall = {label: stats["recall"] for label, stats in per_class.items()}
    if normal_recall is not None:
        recall["normal"] = normal_recall
    return sum(recall[label] * n for label, n in OFFICIAL_TEST_MIX.items()) / sum(OFFICIAL_TEST_MIX.values())


def holdout_folder(run_dir: Path, normals: Path, scratch: Path) -> Path:
    """normal/ = the held-out acquisition's normals; bacterial|viral/ = the run's test-split pneumonias."""
    (scratch / "normal").mkdir(parents=True)
    for image in sorted(normals.glob("*")):
        (scratch / "normal" / image.name).symlink_to(image.resolve())
    for image in (run_dir / "work" / "channels" / "test" / "processed").rglob("*.png"):
        label = image.parent.name
        if label != "normal":
            (scratch / label).mkdir(exist_ok=True)
            (scratch / label / image.name).symlink_to(image.resolve())
    return scratch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--holdout-normals", type=Path, help="folder of normal X-rays left out of training")
    args = parser.parse_args()
    model = args.run_dir / "model"
    metrics = json.loads((model / "metrics.json").read_text())
    config = json.loads((model / "model.json").read_text())
    report = {
        "model": config["model_id"], "hyperparameters": config["hyperparameters"], "data": config["data"],
        "training_seconds": config.get("training_seconds"), "temperature": config["temperature"],
        "threshold": config["threshold"],
        "split_test": {**brief(metrics), "ece_before": metrics["calibration"]["ece_before"]},
        "validation": brief(metrics["validation"]),
        "samples16": brief(evaluate(model, ROOT / "samples" / "kermany-val16")),
        "load_average": os.getloadavg()[0],
    }
    if args.holdout_normals:
        with tempfile.TemporaryDirectory() as scratch:
            folder = holdout_folder(args.run_dir, args.holdout_normals, Path(scratch) / "holdout")
            report["acquisition_holdout"] = brief(evaluate(model, folder))
    estimate = mix_estimate(metrics["per_class"])
    if estimate is not None:
        report["official_mix_estimate"] = {"accuracy": estimate}
        if "acquisition_holdout" in report:
            specificity = report["acquisition_holdout"]["binary"]["specificity"]
            report["official_mix_estimate"]["accuracy_with_holdout_specificity"] = mix_estimate(
                metrics["per_class"], specificity)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
