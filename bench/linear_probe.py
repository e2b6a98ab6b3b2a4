"""How far the frozen ImageNet features alone get on every proxy: a linear probe of the pretrained body.

Usage::

    python bench/linear_probe.py --data DIR --work WORK [--holdout-acquisition DIR] --json OUT.json

The proxies are ``bench/proxies.py``'s (same WORK, same stage, same folds). Every stored image goes once through
the pretrained EfficientNet-Lite2 body as the default recipe feeds it (160 px, squashed, histogram-equalised,
standardised per image), its last map averaged to 1,280 features; then, per proxy, a class-balanced multinomial
logistic regression on the training part (standardised features, the inverse regularisation C chosen by the
validation part's log-loss) is scored on the held-out part: binary AUC and specificity at sensitivity >= 0.95,
three-class accuracy. Kermany et al. (2018) trained only the last layer of an ImageNet network and read
specificity 0.901 on the official test; this says what such a probe reads on our proxies.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import proxies as bench_proxies  # noqa: E402
from cxr import jobcode, training_run  # noqa: E402

ARCHITECTURE, SIZE = "efficientnet_lite2", 160
C_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)


def features(work: Path, classes: list[str]) -> dict[str, np.ndarray]:
    """Every staged image's pooled features from the frozen pretrained body, by stored key (cached in WORK)."""
    cache = work / f"linear-probe-{ARCHITECTURE}-{SIZE}.npz"
    if cache.exists():
        stored = np.load(cache)
        return dict(zip(stored["keys"].tolist(), stored["features"], strict=True))
    data, networks, train = (jobcode.load(name) for name in ("data", "networks", "train"))
    model = networks.build(ARCHITECTURE, len(classes))
    state, _ = train.pretrained_state(str(training_run.pretrained_channel(work / "linear-probe")), ARCHITECTURE)
    if state is None:
        raise SystemExit("no ImageNet weights installed (make setup downloads them)")
    networks.load_pretrained(model, state)
    model.eval()
    found = {}
    for channel in sorted((work / "stage" / "channels").iterdir()):
        split = data.load_split(channel, classes, SIZE, "squash", torch.get_num_threads(), intensity="equalize")
        with torch.no_grad():
            for start in range(0, len(split), 64):
                pooled = model.features(split.inputs[start: start + 64]).mean(dim=(2, 3)).numpy()
                found.update(zip((r["key"] for r in split.records[start: start + 64]), pooled, strict=True))
    np.savez(cache, keys=np.array(list(found)), features=np.stack(list(found.values())))
    return found


def probe(proxy, found: dict[str, np.ndarray], classes: list[str]) -> dict:
    metrics, decision = jobcode.load("metrics"), jobcode.load("decision")
    parts = proxy.parts()

    def table(members):
        return (np.stack([found[i.key] for i in members]), np.array([classes.index(i.label) for i in members]))

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (table(parts[name]) for name in ("train", "validation",
                                                                                          "test"))
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    best = None
    for c in C_GRID:
        fitted = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit((x_train - mean) / std, y_train)
        p_val = fitted.predict_proba((x_val - mean) / std)
        loss = float(-np.mean(np.log(p_val[np.arange(len(y_val)), y_val] + 1e-12)))
        if best is None or loss < best[0]:
            best = (loss, c, fitted)
    _, c, fitted = best
    probs = fitted.predict_proba((x_test - mean) / std)
    normal = classes.index(decision.NORMAL)
    truth, score = y_test != normal, 1.0 - probs[:, normal]
    return {"n": len(y_test), "C": c, "auc": round(metrics.binary_metrics(truth, score, score >= 0.5)["roc_auc"], 4),
            "specificity_at_sensitivity_0.95": round(metrics.at_sensitivity(score, truth, 0.95)["specificity"], 4),
            "three_class_accuracy": round(float(np.mean(probs.argmax(axis=1) == y_test)), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--holdout-acquisition", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    dataset, items = bench_proxies.stage(args.data, args.work)
    found_proxies, _ = bench_proxies.build_proxies(args.work, items, args.clusters, args.holdout_acquisition,
                                                   bench_proxies.original_names(args.data, args.work, items))
    classes = sorted({i.label for i in items})
    pooled = features(args.work, classes)
    result = {"command": shlex.join(["python", "bench/linear_probe.py", *(sys.argv[1:] if argv is None else argv)]),
              "architecture": ARCHITECTURE, "image_size": SIZE, "proxies": {}}
    for proxy in found_proxies:
        result["proxies"][proxy.name] = probe(proxy, pooled, classes)
        print(json.dumps({proxy.name: result["proxies"][proxy.name]}), flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
