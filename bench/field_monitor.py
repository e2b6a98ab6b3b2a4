"""How soon the field monitor notices a site where the model fails, and how often it alarms at one where it does not.

Usage::

    python bench/field_monitor.py --model MODEL_DIR --site NAME=CHANNEL [--site NAME=CHANNEL ...]
        [--per-day 50 --per-day 200] [--days 60] [--repeats 20] [--sample-rate 0.02] --json OUT.json

A *site* is a labelled channel (a ``*.jsonl`` manifest and its stored PNGs, as ``bench/proxies.py`` writes them).
Its X-rays are scored once through the model's own serving code and decision rule (labels and referrals, the
out-of-distribution guard left out). Then, for each daily volume and each repeat, a stream of predictions is
drawn from the site with replacement, ``per-day`` a day: every referred prediction becomes a task, each of the
others with probability ``sample-rate``, and every task gets the site's label as its verdict on the day it is
made. Each evening the monitor's estimate (``lambdas.domain.field_performance``, as ``lambdas/field_monitor.py``
runs it) is compared with the model's validation figures (its ``metrics.json`` ``validation``: what the model
reads on the acquisitions it was trained on), and the first day each measure's whole interval lies below them is
recorded. A site the model serves as measured (its own validation channel) gives the false-alarm rate of daily
checks.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxr import jobcode  # noqa: E402
from cxr.commands.evaluate import score  # noqa: E402
from lambdas.domain import field_performance, review  # noqa: E402


class Site(NamedTuple):
    """A labelled channel scored through the model: the site's labels, the model's, whether it referred each X-ray,
    its p(pneumonia), and the threshold and referral band the model decided at."""

    truth: list[str]
    labels: np.ndarray
    referred: np.ndarray
    probability: np.ndarray
    threshold: float
    band: tuple[float, float]


def scored_site(model_dir: Path, channel: Path) -> Site:
    records = [json.loads(line) for path in sorted(channel.rglob("*.jsonl")) for line in path.read_text().splitlines()]
    scored = score(model_dir, [channel / r["key"] for r in records])
    truth_of = {str(channel / r["key"]): r["label"] for r in records}
    decision = jobcode.load("decision")
    classes = scored.config["classes"]
    rule = decision.Rule.of(scored.config)
    made = decision.decide_all(scored.probs, classes, rule)
    referred = np.any(np.stack(list(made.reasons.values())), axis=0)
    return Site([truth_of[str(p)] for p in scored.paths], np.array(classes)[made.index], referred,
                decision.pneumonia_probability(scored.probs, classes), rule.threshold, tuple(rule.band))


def site_figures(truth: list[str], labels: np.ndarray) -> dict[str, float]:
    """The model's measures on the whole site, every X-ray counted once."""
    truth, labels = np.array(truth), np.asarray(labels)
    subtypes = list(field_performance.SUBTYPES)
    normal, subtyped = truth == "normal", np.isin(truth, subtypes) & np.isin(labels, subtypes)
    return {"sensitivity": round(float(np.mean(labels[~normal] != "normal")), 4),
            "specificity": round(float(np.mean(labels[normal] == "normal")), 4),
            "subtype_accuracy": round(float(np.mean(labels[subtyped] == truth[subtyped])), 4)}


def review_stream(referred: np.ndarray, per_day: int, days: int, rate: float, seed: int
                  ) -> Iterator[tuple[int, list[tuple[int, str, float]]]]:
    """One simulated stream of review tasks, a day at a time: ``per_day`` predictions drawn from the site with
    replacement, every referred one a task and each other one with probability ``rate``, as the predict path
    draws them. Yields the day and its tasks: (the X-ray's index, stratum, inclusion probability)."""
    rng = np.random.default_rng(seed)
    for day in range(1, days + 1):
        tasks = []
        for i in rng.integers(0, len(referred), per_day):
            if referred[i]:
                tasks.append((int(i), review.REFERRED, 1.0))
            elif rng.random() < rate:
                tasks.append((int(i), review.QUALITY_CONTROL, rate))
        yield day, tasks


def first_alarms(truth: list[str], labels: np.ndarray, referred: np.ndarray, reference: dict, per_day: int,
                 days: int, rate: float, seed: int) -> dict[str, int | None]:
    """The first day each measure is flagged below the reference in one simulated stream (None: never)."""
    cells: dict[field_performance.Reviewed, int] = {}
    weight = dict.fromkeys(field_performance.STRATA, 0.0)
    first: dict[str, int | None] = dict.fromkeys(field_performance.MEASURES)
    for day, tasks in review_stream(referred, per_day, days, rate, seed):
        for i, stratum, p in tasks:
            weight[stratum] += 1.0 / p
            cell = field_performance.Reviewed(stratum, p, str(labels[i]), truth[i])
            cells[cell] = cells.get(cell, 0) + 1
        found = field_performance.estimate(cells, weight, reference, resamples=1000, seed=day)
        for name in found["below_model_figure"]:
            if first[name] is None:
                first[name] = day
    return first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--site", action="append", required=True, metavar="NAME=CHANNEL")
    parser.add_argument("--per-day", type=int, action="append")
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sample-rate", type=float, default=review.DEFAULT_SAMPLE_RATE)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    metrics = json.loads((args.model / "metrics.json").read_text())
    reference = field_performance.reference_figures(metrics["validation"])
    result = {"command": shlex.join(["python", "bench/field_monitor.py", *(sys.argv[1:] if argv is None else argv)]),
              "model": str(args.model),
              "reference": {k: {"figure": round(v.figure, 4), "cases": v.cases, "lower": round(v.lower, 4)}
                            for k, v in reference.items()},
              "reference_from": "metrics.json validation", "sample_rate": args.sample_rate, "days": args.days,
              "repeats": args.repeats, "sites": {}}
    for site in args.site:
        name, channel = site.split("=", 1)
        truth, labels, referred, *_ = scored_site(args.model, Path(channel))
        entry = {"channel": channel, "n": len(truth), "referred": round(float(referred.mean()), 4),
                 "figures": site_figures(truth, labels), "volumes": {}}
        for per_day in args.per_day or [50, 200]:
            runs = [first_alarms(truth, labels, referred, reference, per_day, args.days, args.sample_rate, seed)
                    for seed in range(args.repeats)]
            entry["volumes"][str(per_day)] = {
                measure: {"alarmed": sum(r[measure] is not None for r in runs),
                          "first_day": sorted(r[measure] for r in runs if r[measure] is not None)}
                for measure in field_performance.MEASURES}
            print(json.dumps({"site": name, "per_day": per_day,
                              **{m: v["alarmed"] for m, v in entry["volumes"][str(per_day)].items()}}), flush=True)
        result["sites"][name] = entry
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
