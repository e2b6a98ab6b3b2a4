"""INT8 calibration methods under acquisition shift: the proxy bench's models requantized, scored on held-out parts.

Usage: ``python bench/int8_shift.py --work WORK [--work ...] --recipe NAME [--proxy NAME ...] --json OUT.json``.

The served INT8 file of a ``small`` model beats its FP32 file on the high-contrast proxy (bench/RESULTS.md,
stop 6); static quantization clamps activations to the ranges of its calibration images. This requantizes each
``WORK/runs/<recipe>/<proxy>/model/model.onnx`` from the very calibration images ``train.py`` uses (its seeded
sample of the proxy's training part) with each of ONNX Runtime's calibrators (``MinMax`` is what ships, and
must give the served file's figures again; ``Percentile`` and ``Entropy`` clamp tighter) and reports AUC and
specificity at sensitivity >= 0.95 on the held-out part, and accuracy on validation at the model's threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training_job"))

import data  # noqa: E402
import decision  # noqa: E402
import metrics as m  # noqa: E402
import quantize  # noqa: E402
import train  # noqa: E402

METHODS = ("MinMax", "Percentile", "Entropy")


def figures(onnx: Path, config: dict, splits: dict) -> dict:
    """One ONNX file's figures, by the model's own temperature and threshold."""
    classes = config["classes"]
    out = {}
    for name in ("test", "validation"):
        probs = decision.model_probabilities(quantize.logits(onnx, splits[name].inputs), config)
        truth = splits[name].targets.numpy() != classes.index(decision.NORMAL)
        score = decision.pneumonia_probability(probs, classes)
        threshold = config["threshold"] or 0.5
        out[f"{name}_accuracy"] = float(((score >= threshold) == truth).mean())
        if name == "test":
            out["auc"] = m.binary_metrics(truth, score, score >= threshold)["roc_auc"]
            out["specificity_at_sensitivity_0.95"] = m.at_sensitivity(score, truth, 0.95)["specificity"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, type=Path, action="append")
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--proxy", action="append", help="default: cluster0 and cluster2")
    parser.add_argument("--json", required=True, type=Path)
    args = parser.parse_args(argv)
    results = []
    for work in args.work:
        for proxy in args.proxy or ["cluster0", "cluster2"]:
            run = work / "runs" / args.recipe / proxy
            model_dir, channels = run / "model", run / "channels"
            config = json.loads((model_dir / "model.json").read_text())
            hps = config["hyperparameters"]

            def load(name: str, config=config, channels=channels) -> data.Split:
                return data.load_split(channels / name, config["classes"], config["image_size"],
                                       config["resize_policy"], 1, intensity=config["intensity"])

            splits = {name: load(name) for name in ("train", "validation", "test")}
            calibration = train.calibration_images(splits["train"], hps["seed"])
            row = {"work": str(work), "proxy": proxy, "seed": hps["seed"], "served": config["onnx"],
                   "FP32": figures(model_dir / "model.onnx", config, splits)}
            with tempfile.TemporaryDirectory() as tmp:
                for method in METHODS:
                    int8 = Path(tmp) / f"{method}.onnx"
                    quantize.quantize(model_dir / "model.onnx", int8, calibration, method)
                    row[method] = figures(int8, config, splits)
            print(json.dumps(row), flush=True)
            results.append(row)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"recipe": args.recipe, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
