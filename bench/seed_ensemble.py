"""Would an ensemble of training seeds hold up better under shift than one model? Measured on the proxies (issue 21).

Usage::

    python bench/seed_ensemble.py --work WORK0 --work WORK1 ... --recipe NAME [--proxy NAME ...] \
        [--size 3 --size 5] --json OUT.json

Every WORK is a ``bench/proxies.py`` work folder that trained ``NAME`` with another ``--hp seed=N`` (the
proxies' parts do not depend on the training seed, so every member scores the same held-out images). For each
proxy every member's served probabilities (temperature-scaled, INT8 or FP32 as the model chose) are computed
once through the serving code, on the held-out part and on validation. An ensemble of ``k`` is the mean of
``k`` members' probabilities over consecutive, disjoint groups of the seeds given (seeds 0-2, 3-5, ... for
``k`` = 3), so its figures are as many independent draws as there are groups. Each is scored as a model is:
AUC and specificity at sensitivity >= 0.95 on the held-out part (what the worst-proxy rule ranks by), and
binary ACC, sensitivity and specificity at the threshold ``train.py`` would choose on validation (Youden's J,
else 0.5).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proxies import binary_scores, validation_rule_figures  # noqa: E402
from lambdas.domain import splits  # noqa: E402


def member_scores(run: Path) -> dict:
    """One trained member's served probabilities on validation and the held-out part, with the labels."""
    model, channels = run / "model", run / "channels"
    test_p, test_y, classes, _ = binary_scores(model, channels / splits.TEST)
    val_p, val_y, _, _ = binary_scores(model, channels / splits.VALIDATION)
    return {"classes": classes, "test": (test_p, test_y), "validation": (val_p, val_y)}


def figures(members: list[dict]) -> dict:
    """The mean of ``members``' probabilities, scored as one model (threshold chosen on validation)."""
    classes = members[0]["classes"]
    test_y, val_y = members[0]["test"][1], members[0]["validation"][1]
    if any(not (np.array_equal(m["test"][1], test_y) and np.array_equal(m["validation"][1], val_y)) for m in members):
        raise ValueError("the members were not scored on the same images: are the works of one proxy deal?")
    return validation_rule_figures(np.mean([m["test"][0] for m in members], axis=0), test_y,
                                   np.mean([m["validation"][0] for m in members], axis=0), val_y, classes)


def groups(seeds: list[str], size: int) -> list[list[str]]:
    """Consecutive, disjoint groups of ``size`` seeds; a short remainder is left out."""
    return [seeds[i:i + size] for i in range(0, len(seeds) - size + 1, size)]


def summary(rows: list[dict]) -> dict:
    """Mean and range of each figure over independent ensembles of one size."""
    keys = ("auc", "specificity_at_sensitivity_0.95", "accuracy", "sensitivity", "specificity")
    return {k: {"mean": round(statistics.fmean(r[k] for r in rows), 4),
                "min": round(min(r[k] for r in rows), 4), "max": round(max(r[k] for r in rows), 4)} for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, type=Path, action="append", help="one per seed, in seed order")
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--proxy", action="append", help="default: cluster0 and cluster2")
    parser.add_argument("--size", type=int, action="append", help="ensemble sizes (default: 3 and 5)")
    parser.add_argument("--json", required=True, type=Path)
    args = parser.parse_args(argv)
    sizes = [1, *(args.size or [3, 5])]
    result = {"command": shlex.join(["python", "bench/seed_ensemble.py", *(sys.argv[1:] if argv is None else argv)]),
              "recipe": args.recipe, "proxies": {}}
    for proxy in args.proxy or ["cluster0", "cluster2"]:
        runs = {str(w): w / "runs" / args.recipe / proxy for w in args.work}
        scored = {w: member_scores(run) for w, run in runs.items() if (run / "model" / "model.json").exists()}
        works = list(scored)
        by_size = {}
        for size in sizes:
            rows = [{"members": g, **figures([scored[w] for w in g])} for g in groups(works, size)]
            by_size[str(size)] = {"ensembles": rows, "summary": summary(rows)} if rows else None
            if rows:
                print(json.dumps({"proxy": proxy, "size": size, **by_size[str(size)]["summary"]}), flush=True)
        result["proxies"][proxy] = {"members": works, "by_size": by_size}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
