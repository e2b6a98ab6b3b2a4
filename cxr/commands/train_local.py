"""`cxr train-local --data DIR --out DIR [flags]`: the pipeline's split and training job, on this machine.

DIR is the Kaggle layout (``train/ val/ test/`` with label folders) or a plain folder-per-label
tree. The folder goes through the same normaliser and split rules as ingest and PrepareDataset,
is laid out as SageMaker lays out ``ManifestFile`` channels, and ``train.py`` runs under the
same ``SM_*`` environment. Without flags it uses the preset for the images' size, the best
settings measured within the CPU budgets (``x-ray`` for radiographs, ``small`` for 28-64 px
MedMNIST images); ``--preset gpu`` is the longer recipe for a GPU (cxr/presets.py).
Writes ``OUT/model/`` and ``OUT/model.tar.gz``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from cxr import training_run
from cxr.arguments import key_values
from cxr.errors import UsageError
from cxr.presets import PRESETS, SMALL_SIDE


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-local",
        help="split a local folder and run the training job on this machine",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--data", required=True, type=Path, help="labelled folder (Kaggle layout or per label)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (model/, model.tar.gz, logs)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default: chosen from the images' size")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--architecture")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                        help="any other train.py hyperparameter, e.g. --hp augment=light (repeatable)")
    parser.add_argument("--validation-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15,
                        help="share carved out as test when the folder has no test/ (0: none)")
    parser.add_argument("--no-pretrained", action="store_true", help="do not start from ImageNet weights")
    parser.add_argument("--sourcedir", type=Path, help="run from this sourcedir.tar.gz instead of training_job/")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT/checkpoints")
    parser.add_argument("--quiet", action="store_true", help="do not echo the job's log")
    parser.set_defaults(run=run)


def hyperparameters(args, preset: dict) -> dict:
    hps = dict(preset)
    for key in ("epochs", "architecture", "image_size", "batch_size", "lr", "seed"):
        value = getattr(args, key)
        if value is not None:
            hps[key.replace("_", "-")] = value
    for key, value in key_values(args.hp, "--hp").items():
        hps[key.replace("_", "-")] = value
    return hps


def run(args) -> int:
    if not args.data.is_dir():
        raise UsageError(f"no such folder: {args.data}")
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        shutil.rmtree(args.out / "checkpoints", ignore_errors=True)
        shutil.rmtree(args.out / "model", ignore_errors=True)
    staged = training_run.stage_dataset(args.data, args.out / "work", validation_fraction=args.validation_fraction,
                                        test_fraction=args.test_fraction, seed=args.seed or 0)
    print(json.dumps({"classes": staged.classes, "images": staged.summary["images"],
                      "split_method": staged.summary["split_method"]}), flush=True)
    preset_name = args.preset or ("small" if staged.median_side <= SMALL_SIDE else "x-ray")
    hps = hyperparameters(args, PRESETS[preset_name])
    channels = dict(staged.channels)
    with tempfile.TemporaryDirectory() as scratch:
        pretrained = None if args.no_pretrained else training_run.pretrained_channel(Path(scratch))
        if pretrained is not None:  # the pipeline's channel, as it ships
            channels["pretrained"] = pretrained
        print(json.dumps({"preset": preset_name, "flags": hps,  # the job prints every setting in effect
                          "pretrained": next(pretrained.iterdir()).name if pretrained else None}), flush=True)
        model_dir = training_run.run_training_job(channels, hps, args.out, sourcedir=args.sourcedir,
                                                  stream=None if args.quiet else sys.stdout)
    archive = training_run.pack_model(model_dir, args.out / "model.tar.gz")
    metrics = json.loads((model_dir / "metrics.json").read_text())
    summary = {"model": str(model_dir), "archive": str(archive), "evaluated_on": metrics["evaluated_on"],
               "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "roc_auc": metrics["roc_auc"],
               "binary": metrics.get("binary", {}), "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(summary), flush=True)
    return 0
