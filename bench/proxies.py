"""Recipes judged on validation proxies that hold out acquisitions (issue 21); the worst proxy decides.

Usage::

    python bench/proxies.py --data DIR --work WORK --recipe NAME [--recipe NAME ...] [--hp KEY=VALUE ...]
        [--clusters 3] [--holdout-acquisition DIR_OF_ORIGINAL_FILES] --json OUT.json

The folder is staged once as ``cxr train-local`` stages it (WORK/stage). The proxies
(cxr/proxies.py), every one grouped by patient:

* ``split``: the split ``cxr train-local`` makes (its test part);
* ``cluster<j>``: appearance cluster ``j`` of every class held out (k-means on acquisition statistics);
* ``sequence-early`` / ``sequence-late`` (numbered patients only): the lowest- / highest-numbered
  patients of each class and patient series held out, about 20 % of each (a temporal hold-out);
* ``acquisition`` (with ``--holdout-acquisition``): the images whose pixels match that folder's files
  (Kermany's 744 ``NORMAL2-IM-*`` normals) held out, scored beside a patient-grouped 15 % of the
  pneumonias.

Each recipe (RECIPES; ``--hp`` overrides for a short screen) is trained by ``train.py`` on each
proxy's training part, calibrated on its validation part and scored on its held-out part through the
serving handler (``cxr evaluate``'s scoring). Per recipe: binary ACC / AUC / sensitivity /
specificity at the model's own threshold, specificity at sensitivity >= 0.95 on each proxy's own
scores, three-class ACC when there are three classes, the worst proxy of each, and the one threshold
that keeps sensitivity >= 0.95 on every proxy (``metrics.sensitivity_threshold``). Recipes are ranked
by their worst proxy; Spearman correlations of the proxies over the recipes say how far a cheaper
proxy would have chosen the same. Runs already in WORK are reused, so a bench can be resumed or
extended by recipes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxr import jobcode, proxies, training_run  # noqa: E402
from cxr.arguments import key_values  # noqa: E402
from cxr.commands.evaluate import score  # noqa: E402
from cxr.presets import PRESETS  # noqa: E402
from lambdas.domain import imaging, splits  # noqa: E402

RUN_ID = "proxies"
MIN_SENSITIVITY = 0.95
SMALL_EQUALIZED = {"architecture": "compact", "image-size": 28, "epochs": 20, "batch-size": 128, "lr": 3e-3,
                   "width": 32, "augment": "light"}
"""The ``small`` preset of rounds 1-2 (train.py's equalised input), which the PneumoniaMNIST recipes vary one
thing of: pinned, so that their names keep their meaning whatever the preset becomes."""
RECIPES = {
    # PneumoniaMNIST (28 px)
    "small": PRESETS["small"],  # the current preset
    "small-equalized": SMALL_EQUALIZED,
    "small-acquisition": {**SMALL_EQUALIZED, "augment": "acquisition"},
    "resnet64": {**SMALL_EQUALIZED, "architecture": "resnet", "width": 24, "image-size": 64},  # ~0.7 M parameters
    "resnet64-acquisition": {**SMALL_EQUALIZED, "architecture": "resnet", "width": 24, "image-size": 64,
                             "augment": "acquisition"},
    # the plain residual network at the native 28 px (networks.resnet_small: 3x3 stem, no pooling, ~0.7 M parameters)
    "resnet28": {**SMALL_EQUALIZED, "architecture": "resnet_small"},
    "small-strong": {**SMALL_EQUALIZED, "augment": "strong"},  # exposure, resolution, noise; no frames or markers
    "small-long": {**SMALL_EQUALIZED, "epochs": 40, "patience": 6},  # early stopping ended small at 9-17 epochs
    "small-linear": {**SMALL_EQUALIZED, "intensity": "linear"},  # grey levels as stored, not equalised
    "small-narrow": {**SMALL_EQUALIZED, "width": 16},  # a quarter of the weights: less to fit the acquisitions by
    "small-regular": {**SMALL_EQUALIZED, "weight-decay": 0.05, "dropout": 0.5},  # heavier regularisation
    "small-linear-regular": {**SMALL_EQUALIZED, "intensity": "linear", "weight-decay": 0.05, "dropout": 0.5},
    # round 2, stop 6: changes to small-linear (the preset of stop 5)
    "small-linear-mixup": {**SMALL_EQUALIZED, "intensity": "linear", "mixup": 0.2},  # blends of image pairs
    "small-linear-56": {**SMALL_EQUALIZED, "intensity": "linear", "image-size": 56},  # upsampled: 4x the compute
    "small-linear-acquisition": {**SMALL_EQUALIZED, "intensity": "linear", "augment": "acquisition"},  # + frames
    "small-linear-mixup-acquisition": {**SMALL_EQUALIZED, "intensity": "linear", "mixup": 0.2,
                                       "augment": "acquisition"},
    # round 2, stop 8: three small-linear networks (seeds s, s + 1, s + 2) served as their mean (networks.Ensemble)
    "small-linear-ensemble3": {**SMALL_EQUALIZED, "intensity": "linear", "ensemble": 3},
    # round 2, stop 9: the plain residual network of the anchor on stored grey levels, as small-linear
    "resnet28-linear": {**SMALL_EQUALIZED, "architecture": "resnet_small", "intensity": "linear"},
    # Kermany (224 px stored)
    "x-ray": PRESETS["x-ray"],  # train.py's defaults: Lite2 160 px, strong augmentation
    "x-ray-acquisition": {"augment": "acquisition"},
    # round 2, stop 10: the default with a linear probe first (one epoch of the classifier alone on the frozen
    # ImageNet body, then the default's five of everything: LP-FT, which kept pretrained features better out of
    # distribution in Kumar et al. 2022)
    "x-ray-lpft": {"probe-epochs": 1, "epochs": 6},
    "lite0-128-acquisition": {"architecture": "efficientnet_lite0", "image-size": 128, "augment": "acquisition"},
    "gpu": PRESETS["gpu"],  # for a GPU: Lite2 at 288 px, 30 epochs, acquisition augmentation (bench/gpu_proxies.py)
}


def stage(data: Path, work: Path) -> tuple[str, list[splits.Item]]:
    """Stage once (a second bench on the same WORK, e.g. other recipes in parallel, reuses it)."""
    summary_path = work / "stage" / "summary.json"
    if not summary_path.exists():
        training_run.stage_dataset(data, work / "stage", run_id=RUN_ID, log=lambda _: None)
    channels = {name: work / "stage" / "channels" / name for name in splits.SPLITS}
    items = []
    for name, channel in channels.items():
        for path in sorted(channel.rglob("*.jsonl")):
            for line in path.read_text().splitlines():
                r = json.loads(line)
                items.append(splits.Item(r["key"], r["label"], r.get("patient_id"), r["content_hash"], name))
    return json.loads(summary_path.read_text())["dataset"], items


def _features(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return proxies.appearance_features(np.asarray(image.convert("L")))


def _content_hash(path: str) -> str | None:
    try:
        return imaging.normalise(Path(path).read_bytes()).content_hash
    except imaging.RejectedImage:
        return None


def original_names(data: Path, work: Path, items: list[splits.Item]) -> dict[str, str]:
    """Each stored key's original file name (the stage names files by content), by content hash; cached."""
    cache = work / "original-names.json"
    if not cache.exists():
        files = sorted(str(p) for p in data.rglob("*") if p.is_file())
        with ProcessPoolExecutor(2) as pool:
            hashes = list(pool.map(_content_hash, files, chunksize=32))
        cache.write_text(json.dumps({h: Path(f).name for h, f in zip(hashes, files, strict=True) if h}))
    by_hash = json.loads(cache.read_text())
    return {i.key: by_hash[i.content_hash] for i in items if i.content_hash in by_hash}


def build_proxies(work: Path, items: list[splits.Item], clusters: int, acquisition: Path | None,
                  names: dict[str, str]) -> tuple[list[proxies.Proxy], dict]:
    stored = work / "stage" / "stored"
    keys = [i.key for i in items]
    cache = work / "features.npy"
    if cache.exists():
        features = dict(zip(keys, np.load(cache), strict=True))
    else:
        with ProcessPoolExecutor(2) as pool:
            features = dict(zip(keys, pool.map(_features, [str(stored / k) for k in keys], chunksize=64),
                                strict=True))
        np.save(cache, np.stack([features[k] for k in keys]))
    ranks = proxies.appearance_clusters(features, {i.key: i.label for i in items}, clusters)
    described = {}
    for rank in range(clusters):
        members = [k for k in keys if ranks[k] == rank]
        mean = np.mean([features[k] for k in members], axis=0)
        described[f"cluster{rank}"] = {"n": len(members),
                                       "feature_means": dict(zip(proxies.FEATURES, np.round(mean, 4).tolist(),
                                                                 strict=True))}
    by_split = {name: [i for i in items if i.user_split == name] for name in splits.SPLITS}
    found = [proxies.Proxy("split", "the split cut from train by cxr train-local (its test part)",
                           by_split[splits.TRAIN], by_split[splits.VALIDATION], by_split[splits.TEST])]
    found += proxies.cluster_proxies(items, ranks)
    found += proxies.sequence_proxies(items, names)
    if acquisition is not None:
        files = sorted(str(p) for p in acquisition.rglob("*") if p.is_file())
        with ProcessPoolExecutor(2) as pool:
            hashes = set(pool.map(_content_hash, files, chunksize=32)) - {None}
        held = {i.key for i in items if i.content_hash in hashes}
        found.append(proxies.held_out("acquisition", f"{len(held)} images of {acquisition.name} held out "
                                      "(another acquisition), beside unseen pneumonias", items, held,
                                      every_held_image=True))
    for proxy in found:
        leaked = proxies.leaked_groups(proxy)
        if leaked:
            raise AssertionError(f"proxy {proxy.name} splits {len(leaked)} patient groups")
    return found, described


def channels_of(work: Path, root: Path, proxy: proxies.Proxy, dataset: str) -> dict[str, Path]:
    return {name: training_run.write_channel(work / "stage" / "stored", root / name, members, dataset, RUN_ID, name)
            for name, members in proxy.parts().items()}


def binary_scores(model_dir: Path, channel: Path) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Calibrated probabilities through the serving code, with the class index of every image."""
    records = [json.loads(line) for path in sorted(channel.rglob("*.jsonl")) for line in path.read_text().splitlines()]
    scored = score(model_dir, [channel / r["key"] for r in records])
    label_of = {str(channel / r["key"]): r["label"] for r in records}
    y = np.array([scored.config["classes"].index(label_of[str(p)]) for p in scored.paths])
    return scored.probs, y, scored.config["classes"], scored.config


def validation_rule_figures(test_p: np.ndarray, test_y: np.ndarray, val_p: np.ndarray, val_y: np.ndarray,
                            classes: list[str]) -> dict:
    """Served probabilities on a held-out part, scored as ``train.py`` would threshold them: AUC and specificity at
    sensitivity >= 0.95 (threshold-free: what the worst-proxy rule ranks by), then ACC, sensitivity and
    specificity at the threshold chosen on validation (Youden's J, else 0.5)."""
    metrics, decision = jobcode.load("metrics"), jobcode.load("decision")
    truth = test_y != classes.index(decision.NORMAL)
    score = decision.pneumonia_probability(test_p, classes)
    threshold = metrics.choose_threshold(val_p, val_y, classes) or decision.DEFAULT_THRESHOLD
    at_threshold = metrics.operating_point(score, truth, threshold)
    return {"auc": metrics.binary_metrics(truth, score, score >= threshold)["roc_auc"],
            "specificity_at_sensitivity_0.95": metrics.at_sensitivity(score, truth, MIN_SENSITIVITY)["specificity"],
            **{k: at_threshold[k] for k in ("accuracy", "sensitivity", "specificity", "threshold")}}


def run_one(work: Path, recipe: str, hps: dict, proxy: proxies.Proxy, dataset: str) -> dict:
    out = work / "runs" / recipe / proxy.name
    done = out / "result.json"
    if done.exists() and json.loads(done.read_text())["hyperparameters"] == hps:
        return json.loads(done.read_text())
    channels = channels_of(work, out / "channels", proxy, dataset)
    pretrained = training_run.pretrained_channel(out / "channels")  # ImageNet weights, as train-local starts
    if pretrained is not None:
        channels["pretrained"] = pretrained
    started, load_before = time.perf_counter(), os.getloadavg()
    model_dir = training_run.run_training_job(channels, hps, out)
    seconds = round(time.perf_counter() - started, 1)
    load_after = os.getloadavg()
    record = {"recipe": recipe, "proxy": proxy.name, "hyperparameters": hps, "train_seconds": seconds,
              # the machine is shared: the 1-, 5- and 15-minute load averages when training began and ended
              "load_average": {"start": [round(x, 2) for x in load_before], "end": [round(x, 2) for x in load_after]},
              "n": {name: len(members) for name, members in proxy.parts().items()},
              **proxy_figures(model_dir, channels)}
    record["wall_seconds"] = round(time.perf_counter() - started, 1)  # training and scoring
    done.write_text(json.dumps(record))
    return record


def proxy_figures(model_dir: Path, channels: dict[str, Path]) -> dict:
    """A trained model's figures on its proxy's held-out part, by the model's own decision rule."""
    metrics, decision = jobcode.load("metrics"), jobcode.load("decision")
    probs, y, classes, config = binary_scores(model_dir, channels[splits.TEST])
    val_probs, val_y, _, _ = binary_scores(model_dir, channels[splits.VALIDATION])
    normal = classes.index(decision.NORMAL)
    p_pneumonia = decision.pneumonia_probability(probs, classes)
    result = metrics.classification_metrics(y, probs, classes, decision.Rule.of(config))
    validation_point = metrics.choose_operating_point(val_probs, val_y, classes, MIN_SENSITIVITY)
    return {
        "threshold": config.get("threshold"), "epochs_run": len(json.loads((model_dir / "metrics.json").read_text())
                                                                ["training"]["history"]),
        "accuracy": result["accuracy"], "binary": result["binary"],
        "specificity_at_sensitivity": metrics.at_sensitivity(p_pneumonia, y != normal, MIN_SENSITIVITY),
        "validation_operating_point": metrics.operating_point(p_pneumonia, y != normal, validation_point),
        "scores": {"p_pneumonia": np.round(p_pneumonia, 5).tolist(), "pneumonia": (y != normal).astype(int).tolist()},
    }


def summarise(results: dict[str, dict[str, dict]]) -> dict:
    """Per recipe: each proxy's figures, the worst proxy's, the shared operating point; then the ranking."""
    from scipy.stats import spearmanr

    metrics = jobcode.load("metrics")
    table = {}
    for recipe, by_proxy in results.items():
        sets = [(np.array(r["scores"]["p_pneumonia"]), np.array(r["scores"]["pneumonia"]).astype(bool))
                for r in by_proxy.values()]
        rule = {name: metrics.operating_point(*pair, r["validation_operating_point"].get("threshold"))
                for (name, r), pair in zip(by_proxy.items(), sets, strict=True)}
        rows = {name: {"accuracy": r["accuracy"], "binary_accuracy": r["binary"]["accuracy"],
                       "auc": r["binary"]["roc_auc"], "sensitivity": r["binary"]["sensitivity"],
                       "specificity": r["binary"]["specificity"],
                       "specificity_at_sensitivity_0.95": r["specificity_at_sensitivity"].get("specificity"),
                       "validation_point": rule[name],
                       **{f"validation_rule_{k}": rule[name].get(k) for k in ("accuracy", "sensitivity",
                                                                               "specificity")},
                       "n": r["n"]["test"], "train_seconds": r["train_seconds"],
                       "wall_seconds": r.get("wall_seconds"), "load_average": r.get("load_average")}
                for name, r in by_proxy.items()}
        shared = metrics.sensitivity_threshold(sets, MIN_SENSITIVITY)
        worst = {key: min(_none_low(row[key]) for row in rows.values())
                 for key in ("accuracy", "binary_accuracy", "auc", "sensitivity", "specificity",
                             "specificity_at_sensitivity_0.95", "validation_rule_accuracy",
                             "validation_rule_sensitivity", "validation_rule_specificity")}
        worst_proxy = min(rows, key=lambda name: _none_low(rows[name]["specificity_at_sensitivity_0.95"]))
        table[recipe] = {"proxies": rows, "worst": worst, "worst_proxy": worst_proxy,
                         "worst_proxy_threshold": shared,
                         "at_worst_proxy_threshold": {name: metrics.operating_point(s, t, shared) for name, (s, t)
                                                      in zip(by_proxy, sets, strict=True)}}
    ranking = sorted(table, key=lambda r: (table[r]["worst"]["specificity_at_sensitivity_0.95"],
                                           table[r]["worst"]["auc"]), reverse=True)
    proxy_names = sorted({name for row in table.values() for name in row["proxies"]})
    correlations = {}
    if len(table) >= 3:
        for key in ("auc", "specificity_at_sensitivity_0.95"):
            columns = {name: [table[r]["proxies"].get(name, {}).get(key) for r in ranking] for name in proxy_names}
            columns["worst"] = [table[r]["worst"][key] for r in ranking]
            names = [n for n, v in columns.items() if None not in v]
            correlations[key] = {f"{a} ~ {b}": _rho(spearmanr(columns[a], columns[b]).statistic)
                                 for i, a in enumerate(names) for b in names[i + 1:]}
    return {"rule": "rank by the worst proxy's specificity at sensitivity >= 0.95, then its AUC",
            "ranking": ranking, "recipes": table, "spearman_over_recipes": correlations}


def _none_low(value: float | None) -> float:
    return -1.0 if value is None else value


def _rho(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--recipe", action="append", default=[], choices=sorted(RECIPES),
                        help="none: only build and describe the proxies")
    parser.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--holdout-acquisition", type=Path)
    parser.add_argument("--only", action="append", help="run only these proxies (names)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    dataset, items = stage(args.data, args.work)
    found, clusters = build_proxies(args.work, items, args.clusters, args.holdout_acquisition,
                                    original_names(args.data, args.work, items))
    if args.only:
        found = [p for p in found if p.name in args.only]
    print(json.dumps({"proxies": {p.name: {k: len(v) for k, v in p.parts().items()} for p in found}}), flush=True)
    overrides = key_values(args.hp, "--hp")
    results: dict[str, dict[str, dict]] = {}
    for recipe in args.recipe:
        hps = {"threads": 1, **RECIPES[recipe], **overrides}  # 1 thread unless --hp threads=N: benches run in parallel
        for proxy in found:
            record = run_one(args.work, recipe, hps, proxy, dataset)
            results.setdefault(recipe, {})[proxy.name] = record
            print(json.dumps({k: record[k] for k in ("recipe", "proxy", "train_seconds", "accuracy")}
                             | {"binary": {k: record["binary"][k] for k in ("accuracy", "roc_auc", "sensitivity",
                                                                            "specificity")},
                                "spec@sens0.95": record["specificity_at_sensitivity"].get("specificity")}),
                  flush=True)
    summary = summarise(results) if results else {}
    summary.update(command=shlex.join(["python", "bench/proxies.py", *(sys.argv[1:] if argv is None else argv)]),
                   data=str(args.data), overrides=overrides, clusters=clusters,
                   proxies={p.name: {"description": p.description, **{k: len(v) for k, v in p.parts().items()}}
                            for p in found},
                   seconds=round(time.perf_counter() - started, 1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1))
    if results:
        print(json.dumps({"ranking": summary["ranking"], "worst": {r: summary["recipes"][r]["worst"]
                                                                   for r in summary["ranking"]}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
