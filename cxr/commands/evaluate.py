"""`cxr evaluate --model PATH --data DIR [--json]`: score a model on any labelled folder.

Runs the model's own ``code/inference.py`` (ONNX Runtime, the one normaliser, the recorded resize
policy, temperature and threshold) on every image, then the training job's ``metrics.py``, so the
figures are computed exactly as ``metrics.json`` computes them; the labels and referrals come from the
model's own ``code/decision.py``, the rule its endpoint serves: the referral rate, its reasons and the
accuracy on the images not referred are reported. A binary folder (normal and pneumonia) scored by a
three-class model gives the binary view only.
"""

from __future__ import annotations

import base64
import json
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from cxr import jobcode
from cxr.commands.predict import rule_text
from cxr.errors import UsageError
from cxr.training_run import iter_images
from lambdas.domain import labels

BATCH = 32


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model directory or model.tar.gz on a labelled folder",
        description="Score a trained model on a labelled folder (Kaggle layout or folder-per-label) and print "
        "the same metrics as metrics.json. Exit status 0, or 2 on a usage error.",
    )
    parser.add_argument("--model", required=True, type=Path, help="model directory or model.tar.gz")
    parser.add_argument("--data", required=True, type=Path, help="labelled folder of PNG/JPEG X-rays")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--report", type=Path, metavar="OUT.html",
                        help="also write the evaluation report (one self-contained HTML page) there")
    parser.set_defaults(run=run)


def run(args) -> int:
    if not args.model.exists():
        raise UsageError(f"no such model: {args.model}")
    if not args.data.is_dir():
        raise UsageError(f"no such folder: {args.data}")
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = open_model(args.model, Path(scratch))
        result = evaluate(model_dir, args.data, args.report)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_result(result)
    return 0


def open_model(path: Path, scratch: Path) -> Path:
    if path.is_dir():
        return path
    with tarfile.open(path) as archive:
        archive.extractall(scratch, filter="data")
    return scratch


def labelled_images(data_dir: Path) -> list[tuple[Path, str]]:
    found = []
    for path in iter_images(data_dir):
        try:
            found.append((path, labels.describe(path.relative_to(data_dir).parts[-3:]).label))
        except labels.UnlabelledError:
            continue
    if not found:
        raise UsageError(f"no labelled images under {data_dir} (expected <LABEL>/<file> folders)")
    return found


@dataclass
class Scored:
    """The model's output on the files the normaliser accepted, in order."""

    probs: np.ndarray
    paths: list[Path]
    content_hashes: list[str]
    cams: np.ndarray  # (n, classes, h, w) class-activation maps
    config: dict
    inference: ModuleType  # the model's own handler module

    def overlay(self, i: int, k: int) -> bytes:
        """Image ``i`` as stored, with the heat map of class ``k`` drawn on it (PNG bytes)."""
        stored = self.inference.imaging.open_stored(self.inference.input_fn(self.paths[i].read_bytes(), "image/png")
                                                    .image.png)
        explained = self.inference.explanation(stored, self.cams[i, k], self.config["resize_policy"])
        return base64.b64decode(explained["overlay_png"])


def score(model_dir: Path, files: list[Path]) -> Scored:
    """Calibrated class probabilities for each file, through the model's own handler code."""
    inference = jobcode.load("inference", model_dir / "code")
    model = inference.model_fn(str(model_dir))
    config = model.config
    kept, hashes, logits, cams, rejected = [], [], [], [], []
    for start in range(0, len(files), BATCH):
        batch = []
        for path in files[start: start + BATCH]:
            try:
                request = inference.input_fn(path.read_bytes(), "image/png")
            except inference.BadRequest as exc:
                rejected.append(f"{path}: {exc}")
                continue
            batch.append(inference.model_input(inference.imaging.open_stored(request.image.png), config)[0])
            kept.append(path)
            hashes.append(request.image.content_hash)
        if batch:
            batch_logits, batch_cams = model.session.run(["logits", "cams"], {"image": np.stack(batch)})
            logits.append(batch_logits)
            cams.append(batch_cams)
    if rejected:
        print(f"{len(rejected)} images rejected by the normaliser:\n  " + "\n  ".join(rejected), file=sys.stderr)
    probs = jobcode.load("decision").model_probabilities(np.concatenate(logits), config)
    return Scored(probs, kept, hashes, np.concatenate(cams), config, inference)


def evaluate(model_dir: Path, data_dir: Path, report_path: Path | None = None) -> dict:
    """The metrics of the model on the folder; with ``report_path``, the HTML evaluation report there too."""
    images = labelled_images(data_dir)
    by_path = {p: label for p, label in images}
    scored = score(model_dir, [p for p, _ in images])
    probs, config = scored.probs, scored.config
    metrics, decision = jobcode.load("metrics"), jobcode.load("decision")
    classes, rule = config["classes"], decision.Rule.of(config)
    truth = [by_path[p] for p in scored.paths]
    result = {"model": str(model_dir), "data": str(data_dir), "model_id": config.get("model_id")}
    try:
        y = np.array([classes.index(labels.training_label(t, classes)) for t in truth])
    except KeyError:
        y = None
    if y is not None:
        result.update(metrics.classification_metrics(y, probs, classes, rule))
        if report_path:
            write_report(scored, y, data_dir.name, report_path)
            result["report"] = str(report_path)
        return result
    if report_path:
        raise UsageError(f"--report needs the model's own labels {classes}; the folder has {sorted(set(truth))}")
    if decision.NORMAL not in classes or not set(truth) <= {decision.NORMAL, *labels.SUBTYPES, labels.PNEUMONIA}:
        raise UsageError(f"the folder's labels {sorted(set(truth))} do not match the model's classes {classes}")
    decided = decision.decide_all(probs, classes, rule)
    called = decided.index != classes.index(decision.NORMAL)
    sick = np.array([t != decision.NORMAL for t in truth])
    result["binary"] = metrics.binary_metrics(sick, decision.pneumonia_probability(probs, classes), called)
    result["decision"] = metrics.referral_metrics(called == sick, decided, rule)
    result["note"] = "the folder is labelled normal/pneumonia only: binary view of the model's classes"
    return result


def write_report(scored: Scored, y: np.ndarray, name: str, path: Path) -> None:
    report = jobcode.load("report")
    referred, band = report.referrals(scored.probs, scored.config["classes"], scored.config)
    page = report.render(report.Evaluation(
        config=scored.config, evaluated_on=f"folder {name}", y=y, probs=scored.probs,
        content_hashes=scored.content_hashes, overlay=scored.overlay, referred=referred, band=band))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)


def print_result(result: dict) -> None:
    print(f"model {result.get('model_id')}  data {result['data']}")
    if "accuracy" in result:
        print(f"{result['n']} images  accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  "
              f"ROC-AUC {_f(result['roc_auc'])}  ECE {result['ece']:.4f}")
        print(f"{'class':<12} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
        for name, row in result["per_class"].items():
            print(f"{name:<12} {row['precision']:>9.4f} {row['recall']:>9.4f} {row['f1']:>9.4f} {row['support']:>8}")
        print("confusion matrix (rows truth, columns prediction):", result["confusion_matrix"])
    if "binary" in result:
        b = result["binary"]
        print(f"binary (pneumonia vs normal): accuracy {b['accuracy']:.4f}  ROC-AUC {_f(b['roc_auc'])}  "
              f"sensitivity {_f(b['sensitivity'])}  specificity {_f(b['specificity'])}")
    d = result["decision"]
    reasons = ", ".join(f"{name} {n}" for name, n in d["reasons"].items() if n) or "none"
    print(f"referred to a radiologist: {d['referred']} ({_f(d['referral_rate'])}; {reasons}); accuracy on the "
          f"{'binary view of the ' if 'accuracy' not in result else ''}images not referred "
          f"{_f(d['unreferred_accuracy'])}; near-threshold rule: {rule_text(d['threshold'], d['band'])}")
    if "report" in result:
        print(f"report: {result['report']}")


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
