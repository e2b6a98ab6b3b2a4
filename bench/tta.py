"""Test-time augmentation screened on models bench/proxies.py trained (no retraining; issue 21).

Usage::

    python bench/tta.py --work WORK --recipe NAME [--recipe ...] [--proxy NAME ...] --json OUT.json

For every ``WORK/runs/<recipe>/<proxy>/model`` it scores the proxy's held-out part and its validation part
with each view set of :data:`VIEW_SETS` (logits averaged over the views, each scored by ONNX Runtime) and
reports the threshold-free figures the worst-proxy rule ranks by (AUC, specificity at sensitivity >= 0.95
on the held-out part's own scores) and the accuracy at a threshold chosen on validation as ``train.py``
does (Youden's J, else 0.5), for the FP32 and the INT8 file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proxies import validation_rule_figures  # noqa: E402
from cxr import jobcode  # noqa: E402

SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))
"""(rows, columns) a view moves the image by, one pixel each way (the training shifts reach +-0.8 px)."""
GAMMAS = (0.8, 1.25)
VIEW_SETS = {
    "none": {"shifts": (), "gammas": ()},
    "shifts": {"shifts": SHIFTS, "gammas": ()},
    "gamma": {"shifts": (), "gammas": GAMMAS},
    "shifts-gamma": {"shifts": SHIFTS, "gammas": GAMMAS},
}


def views(x: torch.Tensor, name: str) -> list[torch.Tensor]:
    """The batch ``(N, 1, H, W)`` in [0, 1] itself, then its shifted and re-exposed views."""
    chosen = VIEW_SETS[name]
    out = [x]
    if chosen["shifts"]:
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        h, w = x.shape[-2:]
        out += [padded[..., 1 - dy: 1 - dy + h, 1 - dx: 1 - dx + w] for dy, dx in chosen["shifts"]]
    out += [x ** g for g in chosen["gammas"]]
    return out


def score_views(model_dir: Path, channels: Path, view_set: str, onnx_file: str) -> dict:
    """One model file's figures with the logits of ``view_set``'s views averaged (views made in torch, each
    scored by ONNX Runtime, as an exported graph averaging them would)."""
    data, decision, quantize = (jobcode.load(n) for n in ("data", "decision", "quantize"))
    config = json.loads((model_dir / "model.json").read_text())
    classes = config["classes"]

    def logits(images: torch.Tensor) -> np.ndarray:
        return np.mean([quantize.logits(model_dir / onnx_file, v.numpy()) for v in views(images, view_set)],
                       axis=0)

    def probs(name: str) -> tuple[np.ndarray, np.ndarray]:
        split = data.load_split(channels / name, classes, config["image_size"], config["resize_policy"], 1,
                                intensity=config["intensity"])
        return decision.softmax(logits(split.inputs[:])), split.targets.numpy()

    figures = validation_rule_figures(*probs("test"), *probs("validation"), classes)
    return {k: figures[k] for k in ("auc", "specificity_at_sensitivity_0.95", "accuracy", "threshold")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, type=Path, action="append")
    parser.add_argument("--recipe", action="append", required=True)
    parser.add_argument("--proxy", action="append", help="default: cluster0 and cluster2")
    parser.add_argument("--json", required=True, type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for work in args.work:
        for recipe in args.recipe:
            for proxy in args.proxy or ["cluster0", "cluster2"]:
                run = work / "runs" / recipe / proxy
                if not (run / "model" / "model.pt").exists():
                    continue
                for view_set, onnx_file in itertools.product(VIEW_SETS, ("model.onnx", "model.int8.onnx")):
                    row = {"work": str(work), "recipe": recipe, "proxy": proxy, "views": view_set,
                           "file": onnx_file, **score_views(run / "model", run / "channels", view_set, onnx_file)}
                    print(json.dumps(row), flush=True)
                    results.append(row)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"view_sets": VIEW_SETS, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
