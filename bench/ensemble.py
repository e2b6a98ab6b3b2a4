"""Would test-time augmentation or an ensemble of trained runs lift accuracy? Measured, not assumed.

Usage: ``python bench/ensemble.py RUN_DIR RUN_DIR... [--json FILE]`` where every RUN_DIR is a
``cxr train-local --out`` folder made from the same data with the same split seed (the first run's
``work/channels/test`` is the split scored). Prints, on that patient-grouped test split:

* each model alone, and with test-time augmentation (the mean of the logits over the image and
  six small positioning changes: +-8 % scale, +-4 % shift left/right/up/down);
* every ensemble of two or more of the models (the mean of their served probabilities, argmax).

Single models and TTA decide with each model's own rule (``decision.py``: temperature, sub-type
prior, threshold), as served. bf16 autocast on the CPU, as training evaluates.
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

from cxr import jobcode  # noqa: E402

artifact, data, decision = (jobcode.load(name) for name in ("artifact", "data", "decision"))
VIEWS = [(1.0, 0.0, 0.0), (0.92, 0.0, 0.0), (1.08, 0.0, 0.0),
         (1.0, 0.04, 0.0), (1.0, -0.04, 0.0), (1.0, 0.0, 0.04), (1.0, 0.0, -0.04)]
"""(scale, shift x, shift y) of each test-time view, shifts as a fraction of the half-width."""


def view(x: torch.Tensor, scale: float, dx: float, dy: float) -> torch.Tensor:
    if (scale, dx, dy) == (1.0, 0.0, 0.0):
        return x
    theta = torch.tensor([[1 / scale, 0, dx], [0, 1 / scale, dy]], dtype=x.dtype).expand(len(x), 2, 3)
    return F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False),
                         padding_mode="border", align_corners=False)


@torch.no_grad()
def logits(model_dir: Path, channel: Path, views: list) -> tuple[np.ndarray, np.ndarray, dict]:
    model, config = artifact.load_torch_model(model_dir)
    model.to(memory_format=torch.channels_last)
    split = data.load_split(channel, config["classes"], config["image_size"], config["resize_policy"],
                            torch.get_num_threads(), intensity=config.get("intensity", "linear"))  # older: linear
    out = []
    for start in range(0, len(split), 32):
        x = split.inputs[start: start + 32]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out.append(torch.stack([model(view(x, *v).contiguous(memory_format=torch.channels_last)).float()
                                    for v in views]).mean(0))
    return torch.cat(out).numpy(), split.targets.numpy(), config


def shared_channels(runs: list[Path]) -> Path:
    """The first run's staged channels, which every run must have been trained on."""
    fingerprints = {json.loads((run / "model" / "model.json").read_text())["data_fingerprint"] for run in runs}
    if len(fingerprints) > 1:  # another split would have trained on this one's test images
        raise SystemExit("the runs were trained on different splits: use the same data and split seed for all")
    return runs[0] / "work" / "channels"


def accuracy(probs: np.ndarray, labels: np.ndarray, config: dict) -> float:
    """With the model's own decision rule (sub-type prior and threshold, as served)."""
    labelled = decision.decide_all(probs, config["classes"], decision.Rule.of(config)).index
    return float((labelled == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    channel = shared_channels(args.runs) / "test"
    single, tta, configs = {}, {}, {}
    for run in args.runs:
        z, labels, configs[str(run)] = logits(run / "model", channel, VIEWS[:1])
        single[str(run)] = decision.model_probabilities(z, configs[str(run)])
        tta[str(run)] = decision.model_probabilities(logits(run / "model", channel, VIEWS)[0], configs[str(run)])
    result = {
        "test_split": str(channel), "n": int(len(labels)), "classes": configs[str(args.runs[0])]["classes"],
        "single": {name: accuracy(p, labels, configs[name]) for name, p in single.items()},
        "tta": {name: accuracy(p, labels, configs[name]) for name, p in tta.items()},
        "ensembles": {" + ".join(combo): float((np.mean([single[n] for n in combo], 0).argmax(1) == labels).mean())
                      for r in range(2, len(single) + 1) for combo in itertools.combinations(single, r)},
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
