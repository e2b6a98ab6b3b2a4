"""The worst-proxy rule of bench/proxies.py: ranking, shared operating point, agreement between proxies."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("bench.proxies")


def _record(separation: float, seed: int, n: int = 200) -> dict:
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 2 == 0
    score = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + np.where(truth, separation, -separation))))
    called = score >= 0.5
    tn, fp = int((~called & ~truth).sum()), int((called & ~truth).sum())
    fn, tp = int((~called & truth).sum()), int((called & truth).sum())
    return {"accuracy": (tp + tn) / n, "n": {"test": n}, "train_seconds": 1.0,
            "binary": {"accuracy": (tp + tn) / n, "roc_auc": None, "sensitivity": tp / (tp + fn),
                       "specificity": tn / (tn + fp)},
            "specificity_at_sensitivity": {"specificity": None}, "validation_operating_point": {},
            "scores": {"p_pneumonia": score.tolist(), "pneumonia": truth.astype(int).tolist()}}


def test_the_recipe_with_the_best_worst_proxy_wins_even_if_another_has_the_best_proxy(bench):
    from sklearn.metrics import roc_auc_score

    # "steady" is good everywhere; "brittle" is best on the easy split and bad on the shifted cluster
    results = {"steady": {"split": _record(2.0, 1), "cluster0": _record(1.6, 2)},
               "brittle": {"split": _record(3.0, 3), "cluster0": _record(0.6, 4)},
               "weak": {"split": _record(1.0, 5), "cluster0": _record(0.9, 6)}}
    metrics = bench.jobcode.load("metrics")
    for by_proxy in results.values():
        for r in by_proxy.values():
            score, truth = np.array(r["scores"]["p_pneumonia"]), np.array(r["scores"]["pneumonia"]).astype(bool)
            r["binary"]["roc_auc"] = roc_auc_score(truth, score)
            r["specificity_at_sensitivity"] = metrics.at_sensitivity(score, truth, 0.95)
    summary = bench.summarise(results)
    assert summary["ranking"][0] == "steady"
    assert results["brittle"]["split"]["binary"]["roc_auc"] > results["steady"]["split"]["binary"]["roc_auc"]
    assert summary["recipes"]["brittle"]["worst_proxy"] == "cluster0"
    for recipe in results:  # the shared threshold keeps sensitivity >= 0.95 on every proxy
        at = summary["recipes"][recipe]["at_worst_proxy_threshold"]
        assert min(point["sensitivity"] for point in at.values()) >= 0.95
    # the easy split ranks the recipes differently from the shifted cluster: its correlation is not 1
    assert summary["spearman_over_recipes"]["auc"]["cluster0 ~ split"] < 1
    assert summary["spearman_over_recipes"]["auc"]["cluster0 ~ worst"] == 1


def test_binary_scores_read_a_channel_through_the_serving_code(bench, trained, staged):
    """Every image of the test channel scored with its own label: the call shape `cxr evaluate` now has."""
    probs, y, classes, config = bench.binary_scores(trained / "model", staged.channels["test"])
    manifests = Path(staged.channels["test"]).rglob("*.jsonl")
    records = [line for path in manifests for line in path.read_text().splitlines()]
    assert probs.shape == (len(records), len(classes)) and len(y) == len(records)
    assert classes == config["classes"] and set(y) <= set(range(len(classes)))


def test_a_proxy_run_is_scored_by_the_models_own_rule(bench, trained, staged):
    """The figures `run_one` records for a trained model (it crashed after the decision rule merged)."""
    figures = bench.proxy_figures(trained / "model", staged.channels)
    assert set(figures["binary"]) >= {"sensitivity", "specificity", "roc_auc"}
    assert len(figures["scores"]["p_pneumonia"]) == len(figures["scores"]["pneumonia"]) > 0


def test_the_small_preset_is_the_recipe_the_worst_proxy_rule_picked(bench):
    """bench/RESULTS.md: small-linear beat the equalised preset on the worst proxy at full length, three seeds each
    (stop 5); over seven seeds mixup's lead on it was inside the seeds' spread, so it stayed (stop 6); three of its
    networks served as their mean beat one on the worst proxy in every measure (stop 8)."""
    from cxr import presets

    assert presets.expand("small", {}) == bench.RECIPES["small-linear-ensemble3"] == bench.RECIPES["small"]
    assert {**bench.RECIPES["small-linear"], "ensemble": 3} == bench.RECIPES["small"]
    assert bench.RECIPES["small-equalized"].get("intensity", "equalize") == "equalize"


def test_sequence_folds_find_each_stored_images_original_name(bench, tiny_dataset, tmp_path):
    """The stage names files by content; the sequence folds need the names they came with."""
    from cxr import proxies

    _, items = bench.stage(tiny_dataset, tmp_path)
    names = bench.original_names(tiny_dataset, tmp_path, items)
    originals = {p.name: p.parent.name for p in tiny_dataset.rglob("*") if p.is_file()}
    assert len(names) == len(items) and set(names.values()) <= set(originals)
    folds = {p.name: p for p in proxies.sequence_proxies(items, names)}
    early = folds["sequence-early"]
    # the lowest-numbered patient of every class's series is held out
    assert {i.patient_id for i in early.test} >= {"1000", "2000", "3000"}
    assert proxies.leaked_groups(early) == set()


def test_the_linear_probe_reads_every_proxy_from_frozen_imagenet_features(tiny_dataset, tmp_path):
    """bench/linear_probe.py on the tiny staged set: one pass of the pretrained body, a probe per proxy."""
    from cxr import training_run

    if training_run.pretrained_channel(tmp_path / "weights") is None:
        pytest.skip("no ImageNet weights installed")
    probe = importlib.import_module("bench.linear_probe")
    out = tmp_path / "probe.json"
    assert probe.main(["--data", str(tiny_dataset), "--work", str(tmp_path / "work"), "--clusters", "2",
                       "--json", str(out)]) == 0
    import json

    result = json.loads(out.read_text())
    assert {"split", "cluster0", "cluster1"} <= set(result["proxies"])
    for figures in result["proxies"].values():
        assert figures["n"] > 0 and figures["C"] in probe.C_GRID
        assert 0.5 <= figures["auc"] <= 1 and 0 <= figures["three_class_accuracy"] <= 1
    assert (tmp_path / "work" / "linear-probe-efficientnet_lite2-160.npz").exists()  # features cached for the next run


def _result(seed: int, figures: dict[str, dict[str, tuple[float, float]]]) -> dict:
    """A bench/proxies.py JSON: recipe -> proxy -> (specificity at sensitivity 0.95, AUC)."""
    return {"overrides": {"seed": str(seed)} if seed else {},
            "recipes": {recipe: {"proxies": {proxy: {"specificity_at_sensitivity_0.95": spec, "auc": auc,
                                                     "accuracy": 0.9, "binary_accuracy": 0.9, "specificity": spec,
                                                     "n": 100}
                                             for proxy, (spec, auc) in by_proxy.items()}}
                        for recipe, by_proxy in figures.items()}}


def test_the_summary_ranks_recipes_by_their_worst_proxy_over_every_draw():
    """bench/proxy_summary.py: the grid of many calls read as one; a re-read run counts once, a repeat twice."""
    summary_module = importlib.import_module("bench.proxy_summary")
    seed0 = _result(0, {"steady": {"split": (0.98, 0.99), "cluster0": (0.95, 0.98)},
                        "lucky": {"split": (0.99, 0.99), "cluster0": (0.99, 0.99)},
                        "partial": {"split": (1.0, 1.0)}})
    seed1 = _result(1, {"lucky": {"cluster0": (0.85, 0.97)}})  # one good draw and one bad: its mean decides
    reread = _result(0, {"steady": {"cluster0": (0.95, 0.98)}})  # a later call reading the same run again
    repeat = _result(0, {"steady": {"cluster0": (0.93, 0.98)}})  # the same seed trained again: another draw
    summary = summary_module.summarise([seed0, seed1, reread, repeat])
    steady, lucky = summary["recipes"]["steady"], summary["recipes"]["lucky"]
    assert steady["proxies"]["cluster0"]["seeds"] == [0, 0]
    assert steady["proxies"]["cluster0"]["specificity_at_sensitivity_0.95"]["mean"] == pytest.approx(0.94)
    assert lucky["proxies"]["cluster0"]["specificity_at_sensitivity_0.95"]["mean"] == pytest.approx(0.92)
    assert summary["ranking"] == ["steady", "lucky"] and summary["unranked"] == ["partial"]
    assert steady["worst_proxy"] == "cluster0" and summary["recipes"]["partial"]["worst_proxy"] is None
    table = summary_module.markdown(summary)
    assert "| 1 | `steady` | 1-2 | **0.940 (0.930-0.950)** | 0.980 |" in table
    assert "| - | `partial` | 1 | - | 1.000 | - | - |" in table


@pytest.mark.parametrize(("protocol", "recipe", "preset", "proxies", "worst"), [
    ("kermany", "x-ray", "x-ray", 7, "acquisition"),
    ("pneumoniamnist", "small-linear-ensemble3", "small", 6, "sequence-late")])
def test_each_default_is_the_recipe_the_rule_picks_over_every_draw(bench, protocol, recipe, preset, proxies, worst):
    """The presets `cxr train-local` picks, against every recipe run at full length on all of a dataset's proxies
    (bench/proxy_summary.py's files: the tables of bench/RESULTS.md)."""
    from cxr import presets

    summary_module = importlib.import_module("bench.proxy_summary")
    summary = summary_module.summarise(summary_module.read(summary_module.protocol_files(protocol)))
    assert len(summary["proxies"]) == proxies and len(summary["ranking"]) >= 2
    assert summary["ranking"][0] == recipe and bench.RECIPES[recipe] == presets.expand(preset, {})
    assert summary["recipes"][recipe]["worst_proxy"] == worst
