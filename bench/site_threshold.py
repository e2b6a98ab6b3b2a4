"""What a site gains by the threshold its own verdicts call for, and how often that threshold breaks its sensitivity.

Usage::

    python bench/site_threshold.py --model MODEL_DIR --site NAME=CHANNEL [--site NAME=CHANNEL ...]
        [--per-day 50 --per-day 200] [--day 30 --day 90] [--repeats 20] [--sample-rate 0.02] --json OUT.json

A *site* is a labelled channel scored once through the model's serving code and decision rule, as in
``bench/field_monitor.py``. For each daily volume and repeat, a stream of predictions is drawn from the site with
replacement: every referred prediction becomes a task, each other one with probability ``sample-rate``, and every
task gets the site's label as its verdict. On each ``--day`` the site's threshold is fitted to the stream's
verdicts (``lambdas.domain.site_threshold``, as ``cxr status`` and the FieldMonitor fit it) and judged on the
whole site, every X-ray counted once: its true sensitivity and specificity there, against the model's threshold
and against the best the band allows (the highest threshold in the referral band whose true sensitivity keeps the
target, which only the site's full labels know).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.field_monitor import Site, review_stream, scored_site  # noqa: E402
from lambdas.domain import field_performance, review, site_threshold  # noqa: E402


def true_rates(site: Site, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity on the whole site at ``threshold`` (p(pneumonia) counted to the fit's decimals)."""
    sick = np.array(site.truth) != "normal"
    called = np.round(site.probability, site_threshold.DECIMALS) >= round(threshold, site_threshold.DECIMALS)
    return float(called[sick].mean()), float((~called[~sick]).mean())


def best_in_band(site: Site, target: float) -> float | None:
    """The highest threshold in the band (or the model's own) whose true sensitivity on the site keeps the target."""
    p = np.round(site.probability, site_threshold.DECIMALS)
    low, high = site.band
    candidates = sorted({*p[(p > low) & (p < high)].tolist(), round(site.threshold, site_threshold.DECIMALS)})
    keeping = [t for t in candidates if true_rates(site, t)[0] >= target]
    return max(keeping) if keeping else None


def stream_fits(site: Site, per_day: int, days: list[int], rate: float, seed: int) -> dict[int, tuple]:
    """The threshold fitted on each of ``days`` in one simulated review stream and its move (None: none offered)."""
    scored: dict[site_threshold.Scored, int] = {}
    weight = dict.fromkeys(field_performance.STRATA, 0.0)
    point = site_threshold.OperatingPoint(site.threshold, site.band)
    found = {}
    for day, tasks in review_stream(site.referred, per_day, max(days), rate, seed):
        for i, stratum, p in tasks:
            weight[stratum] += 1.0 / p
            cell = site_threshold.cell(stratum, p, float(site.probability[i]), site.truth[i])
            scored[cell] = scored.get(cell, 0) + 1
        if day in days:
            fitted = site_threshold.fit(scored, weight, point, resamples=500, seed=day)
            found[day] = (fitted["threshold"], fitted.get("move"))
    return found


def summarise(site: Site, fits: list[tuple], target: float) -> dict:
    """How the streams' thresholds serve the whole site: how many moved which way, and what the thresholds
    given read on the whole site (a kept threshold gains nothing)."""
    model_sensitivity, model_specificity = true_rates(site, site.threshold)
    offered = [t for t, _ in fits if t is not None]
    rates = [true_rates(site, t) for t in offered]
    gains = [specificity - model_specificity for _, specificity in rates]
    sensitivities = [sensitivity for sensitivity, _ in rates]
    moves = [str(move) for _, move in fits]
    return {"offered": len(offered), "of": len(fits), "moves": {m: moves.count(m) for m in sorted(set(moves))},
            "threshold": [round(min(offered), 3), round(float(np.median(offered)), 3), round(max(offered), 3)]
            if offered else None,
            "sensitivity_below_target": sum(s < target for s in sensitivities),
            "true_sensitivity": [round(min(sensitivities), 4), round(max(sensitivities), 4)] if rates else None,
            "specificity_gain": [round(min(gains), 4), round(float(np.median(gains)), 4), round(max(gains), 4)]
            if gains else None,
            "model_threshold_figures": [round(model_sensitivity, 4), round(model_specificity, 4)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--site", action="append", required=True, metavar="NAME=CHANNEL")
    parser.add_argument("--per-day", type=int, action="append")
    parser.add_argument("--day", type=int, action="append")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sample-rate", type=float, default=review.DEFAULT_SAMPLE_RATE)
    parser.add_argument("--target", type=float, default=site_threshold.TARGET_SENSITIVITY)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    days = sorted(args.day or [30, 90])
    started = time.perf_counter()
    result = {"command": shlex.join(["python", "bench/site_threshold.py", *(sys.argv[1:] if argv is None else argv)]),
              "model": str(args.model), "sample_rate": args.sample_rate, "days": days, "repeats": args.repeats,
              "target_sensitivity": args.target, "sites": {}}
    for spec in args.site:
        name, channel = spec.split("=", 1)
        site = scored_site(args.model, Path(channel))
        best = best_in_band(site, args.target)
        entry = {"channel": channel, "n": len(site.truth), "normals": int(sum(t == "normal" for t in site.truth)),
                 "referred": round(float(site.referred.mean()), 4), "model_threshold": round(site.threshold, 4),
                 "band": [round(v, 4) for v in site.band],
                 "model_threshold_figures": [round(v, 4) for v in true_rates(site, site.threshold)],
                 "best_in_band": None if best is None else {"threshold": best,
                                                             "figures": [round(v, 4) for v in true_rates(site, best)]},
                 "volumes": {}}
        for per_day in args.per_day or [50, 200]:
            streams = [stream_fits(site, per_day, days, args.sample_rate, seed) for seed in range(args.repeats)]
            entry["volumes"][str(per_day)] = {str(day): summarise(site, [s[day] for s in streams], args.target)
                                              for day in days}
            print(json.dumps({"site": name, "per_day": per_day, **entry["volumes"][str(per_day)]}), flush=True)
        result["sites"][name] = entry
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
