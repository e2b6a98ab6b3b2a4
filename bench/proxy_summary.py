"""Every recipe on every proxy, over every draw, in one table: the worst-proxy rule applied to bench results.

Usage::

    python bench/proxy_summary.py --protocol kermany|pneumoniamnist [--json OUT.json] > table.md
    python bench/proxy_summary.py bench/results/A.json [B.json ...] > table.md

``bench/proxies.py`` writes one JSON per call, and a grid is run in many calls (recipes in parallel, seeds,
one proxy at a time). This reads them together: a draw is one recipe trained with one seed on one proxy
(``--hp seed=N``); a run read again by a later call (the same figures) is counted once, a run repeated is
another draw. Per recipe and proxy it takes the mean over the draws; a recipe's worst proxy is the one with
the lowest mean specificity at sensitivity >= 0.95, and recipes are ranked by that figure, then by their worst
mean AUC (the rule of ``bench/proxies.py``, over draws). Recipes missing a proxy are listed but not ranked:
the rule needs every proxy. Spearman correlations over the ranked recipes say how far each proxy alone would
have chosen as the worst does.

Pass the results of one protocol only (one dataset, one set of proxies, full-length runs): a short screen
or another grouping of the same proxy names would be averaged in otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PROTOCOLS = {
    # full length on the CPU, seven proxies (bench/RESULTS.md, round 2, stops 7-11; stop 8's one-thread draws too)
    "kermany": ["kermany-proxies-full.json", "kermany-proxies-full-acquisition-seed1.json",
                "kermany-proxies-full-acquisition-seed2.json", "kermany-proxies-full-acquisition-xray-seed1.json",
                "kermany-proxies-full-acquisition-xray-seed2.json", "kermany-proxies-acquisition-stop11.json",
                "kermany-proxies-full-cluster0.json", "kermany-proxies-full-cluster1.json",
                "kermany-proxies-full-cluster2.json", "kermany-proxies-full-clusters-sequence.json",
                "kermany-proxies-full-acquisition-clusters.json", "kermany-proxies-sequence.json",
                "kermany-proxies-lpft.json", "kermany-proxies-lpft-acquisition-seed1.json",
                "kermany-xray-acquisition-threads1-seed0.json", "kermany-xray-acquisition-threads1-seed1.json",
                "kermany-xray-acquisition-threads1-seed2.json"],
    # grouped by patient (bench/pneumoniamnist_sources.py), six proxies, the small preset's full schedule
    "pneumoniamnist": ["pneumoniamnist-patient-proxies.json", "pneumoniamnist-patient-proxies-seed1.json",
                       "pneumoniamnist-patient-proxies-seed2.json",
                       "pneumoniamnist-patient-proxies-ensemble3-seed3.json",
                       "pneumoniamnist-patient-proxies-ensemble3-seed6.json",
                       "pneumoniamnist-grid.json"],
}
"""The result files of each protocol that RESULTS.md's "every recipe on every proxy" tables are read from."""
KEY = "specificity_at_sensitivity_0.95"
COLUMNS = (KEY, "auc", "binary_accuracy", "accuracy", "specificity")


def read(paths: list[Path]) -> list[dict]:
    """The bench/proxies.py JSONs at these paths."""
    return [json.loads(path.read_text()) for path in paths]


def protocol_files(name: str) -> list[Path]:
    """The result files of one of PROTOCOLS."""
    return [RESULTS / file for file in PROTOCOLS[name]]


def draws(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(recipe, proxy) -> its runs' figures, each with its seed, from bench/proxies.py JSONs."""
    found: dict[tuple[str, str], dict[tuple, dict]] = {}
    for result in results:
        seed = int(result.get("overrides", {}).get("seed", 0))
        for recipe, table in result.get("recipes", {}).items():
            for proxy, row in table["proxies"].items():
                identity = (seed, row.get("n"), *(row.get(column) for column in COLUMNS))
                found.setdefault((recipe, proxy), {})[identity] = {"seed": seed, **row}
    return {pair: list(runs.values()) for pair, runs in found.items()}


def summarise(results: list[dict]) -> dict:
    """Means and ranges per recipe and proxy, each recipe's worst proxy, the ranking, the proxies' agreement."""
    from scipy.stats import spearmanr

    by_pair = draws(results)
    proxies = sorted({proxy for _, proxy in by_pair})
    recipes = sorted({recipe for recipe, _ in by_pair})
    table = {}
    for recipe in recipes:
        cells = {}
        for proxy in proxies:
            rows = by_pair.get((recipe, proxy))
            if not rows:
                continue
            cells[proxy] = {"seeds": sorted(row["seed"] for row in rows)} | {
                column: _spread([row.get(column) for row in rows]) for column in COLUMNS}
        complete = len(cells) == len(proxies)
        worst_proxy = min(cells, key=lambda p: cells[p][KEY]["mean"]) if complete else None
        table[recipe] = {"proxies": cells, "complete": complete, "worst_proxy": worst_proxy,
                         "worst": {column: min(c[column]["mean"] for c in cells.values()) for column in COLUMNS}
                         if complete else None}
    ranked = sorted((r for r in recipes if table[r]["complete"]),
                    key=lambda r: (table[r]["worst"][KEY], table[r]["worst"]["auc"]), reverse=True)
    agreement = {}
    if len(ranked) >= 3:
        for column in (KEY, "auc"):
            worst = [table[r]["worst"][column] for r in ranked]
            agreement[column] = {proxy: _rho(spearmanr([table[r]["proxies"][proxy][column]["mean"] for r in ranked],
                                                       worst).statistic) for proxy in proxies}
    return {"rule": "rank by the worst proxy's mean specificity at sensitivity >= 0.95 over draws, then its AUC",
            "proxies": proxies, "ranking": ranked, "unranked": [r for r in recipes if not table[r]["complete"]],
            "recipes": table, "spearman_with_worst": agreement}


def _spread(values: list[float | None]) -> dict:
    known = [v for v in values if v is not None]
    if not known:
        return {"mean": -1.0, "min": None, "max": None}  # ranks last, as bench/proxies.py's _none_low
    return {"mean": float(np.mean(known)), "min": min(known), "max": max(known)}


def _rho(value: float) -> float | None:
    """Two decimals, as the table prints them: rounding bench/proxies.py's three again would move a few."""
    return None if np.isnan(value) else round(float(value), 2)


def markdown(summary: dict) -> str:
    """The table RESULTS.md quotes: specificity at sensitivity >= 0.95 per proxy (bold: the worst), the rank."""
    proxies, table = summary["proxies"], summary["recipes"]
    three_class = any(c["accuracy"]["mean"] != c["binary_accuracy"]["mean"]
                      for row in table.values() for c in row["proxies"].values())
    head = ["rank", "recipe", "draws", *proxies, "worst AUC", "worst binary ACC",
            *(["worst 3-class ACC"] if three_class else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for recipe in summary["ranking"] + summary["unranked"]:
        row = table[recipe]
        counts = sorted({len(c["seeds"]) for c in row["proxies"].values()})
        worst = row["worst"]
        figures = ([f"{worst['auc']:.4f}", f"{worst['binary_accuracy']:.3f}",
                    *([f"{worst['accuracy']:.3f}"] if three_class else [])]
                   if worst else ["-"] * (len(head) - 3 - len(proxies)))
        rank = str(summary["ranking"].index(recipe) + 1) if recipe in summary["ranking"] else "-"
        lines.append("| " + " | ".join([rank, f"`{recipe}`", "-".join(map(str, sorted({counts[0], counts[-1]}))),
                                         *(_cell(row["proxies"].get(p), bold=p == row["worst_proxy"])
                                           for p in proxies), *figures]) + " |")
    if summary["spearman_with_worst"]:
        lines += ["", "| Spearman with the worst proxy, over the ranked recipes | " + " | ".join(proxies) + " |",
                  "|" + " --- |" * (len(proxies) + 1)]
        for column, by_proxy in summary["spearman_with_worst"].items():
            label = "spec. at sens. >= 0.95" if column == KEY else column.upper()
            lines.append(f"| {label} | " + " | ".join("-" if by_proxy[p] is None else f"{by_proxy[p]:.2f}"
                                                       for p in proxies) + " |")
    return "\n".join(lines) + "\n"


def _cell(cell: dict | None, bold: bool) -> str:
    if cell is None:
        return "-"
    figure = cell[KEY]
    text = f"{figure['mean']:.3f}"
    if figure["min"] != figure["max"]:
        text += f" ({figure['min']:.3f}-{figure['max']:.3f})"
    return f"**{text}**" if bold else text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="*", type=Path, help="bench/proxies.py JSONs of one protocol")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), help="the result files RESULTS.md reads")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    paths = args.results + (protocol_files(args.protocol) if args.protocol else [])
    if not paths:
        parser.error("name result files or a --protocol")
    summary = summarise(read(paths))
    summary["inputs"] = [path.name for path in paths]
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    sys.stdout.write(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
