"""`cxr import-medmnist`, `cxr train-local` and `cxr evaluate` as a user runs them, on generated data."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from synthetic import xray

from cxr import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def medmnist_npz(module_dir):
    """A PneumoniaMNIST-shaped file: 28 px uint8, labels (N, 1), 0 normal / 1 pneumonia."""
    rng = np.random.default_rng(0)

    def split(n):
        labels = np.arange(n) % 2
        images = np.stack([np.asarray(xray("bacterial" if y else "normal", rng, size=(28, 28))) for y in labels])
        return images, labels[:, None]

    path = module_dir("npz") / "pneumoniamnist_trainval.npz"
    (tr_x, tr_y), (va_x, va_y) = split(60), split(20)
    np.savez(path, train_images=tr_x, train_labels=tr_y, val_images=va_x, val_labels=va_y)
    return path


def test_import_medmnist_writes_kaggle_layout(medmnist_npz, tmp_path, capsys):
    assert cli.main(["import-medmnist", str(medmnist_npz), "--out", str(tmp_path / "mnist")]) == 0
    assert len(list((tmp_path / "mnist" / "train" / "NORMAL").glob("*.png"))) == 30
    assert len(list((tmp_path / "mnist" / "val" / "PNEUMONIA").glob("*.png"))) == 10
    assert not (tmp_path / "mnist" / "test").exists()  # only the splits present in the file
    assert "train: 60 images" in capsys.readouterr().out


def test_import_medmnist_refuses_multilabel_files(tmp_path):
    path = tmp_path / "chestmnist.npz"
    np.savez(path, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros((2, 14), np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["import-medmnist", str(path), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2


def test_train_local_then_evaluate_on_imported_medmnist(medmnist_npz, tmp_path, capsys):
    data, out = tmp_path / "mnist", tmp_path / "run"
    cli.main(["import-medmnist", str(medmnist_npz), "--out", str(data)])
    capsys.readouterr()
    code = cli.main(["train-local", "--data", str(data), "--out", str(out), "--epochs", "2", "--hp", "width=8",
                     "--hp", "threads=1", "--quiet"])
    assert code == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert printed[1]["preset"] == "small"  # 28 px images
    assert printed[-1]["evaluated_on"] == "test"  # carved out by patient-free grouping: no test/ in the folder
    with tarfile.open(out / "model.tar.gz") as archive:
        names = set(archive.getnames())
        shipped = json.load(archive.extractfile("model.json"))
    assert {"model.onnx", "model.json", "metrics.json", "code/inference.py", "code/imaging.py"} <= names
    assert shipped["intensity"] == "linear"  # the small preset's stored grey levels (bench/RESULTS.md, issue 21)
    assert shipped["ensemble"] == 3  # and its three networks
    summary = json.loads((out / "work" / "summary.json").read_text())
    assert summary["classes"] == ["normal", "pneumonia"]
    assert any("too few" in note for note in summary["split_method"])  # the 20-image val/ was replaced
    assert cli.main(["evaluate", "--model", str(out / "model.tar.gz"), "--data", str(data / "val"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 20 and result["classes"] == ["normal", "pneumonia"]
    assert set(result["binary"]) >= {"accuracy", "roc_auc", "sensitivity", "specificity"}


def test_gpu_preset_runs_on_the_cpu_with_tiny_settings(medmnist_npz, tmp_path, capsys):
    """The `gpu` recipe's code path (Lite2 from the ImageNet bundle, acquisition augmentation, EMA,
    the sensitivity operating point) on a few images at 32 px; its figures need a GPU."""
    from cxr import presets

    data, out = tmp_path / "mnist", tmp_path / "run"
    cli.main(["import-medmnist", str(medmnist_npz), "--out", str(data)])
    tiny = {"image-size": "32", "epochs": "1", "batch-size": "8", "threads": "1", "threshold-rule": "sensitivity"}
    assert presets.expand("gpu", tiny)["augment"] == "acquisition"  # what `cxr train --preset gpu` sends
    code = cli.main(["train-local", "--data", str(data), "--out", str(out), "--preset", "gpu", "--quiet",
                     *(flag for key, value in tiny.items() for flag in ("--hp", f"{key}={value}"))])
    assert code == 0
    config = json.loads((out / "model" / "model.json").read_text())
    assert config["architecture"] == "efficientnet_lite2" and config["image_size"] == 32
    assert config["pretrained"] is not None  # started from the ImageNet weights, as on SageMaker
    hps = config["hyperparameters"]
    assert (hps["augment"], hps["ema_decay"], hps["epochs"], hps["threshold_rule"]) == (
        "acquisition", 0.998, 1, "sensitivity")
    assert "sensitivity >= 0.95" in config["threshold_rule"]


def test_an_approved_model_in_lambda_mode_is_reported_deployed_without_an_endpoint(capsys):
    """endpoint_mode=lambda has no Deploy step: the registry's approval is the deployment, and `cxr train` says so."""
    from cxr.commands import train

    approved = {"registration": {"approved": True, "version": 3, "reason": "passed"}}
    assert train.deployed("SUCCEEDED", approved)
    assert not train.deployed("SUCCEEDED", {"registration": {"approved": False, "version": 4, "reason": "no"}})
    train.print_outcome({"status": "SUCCEEDED", "output": approved, "cause": "",
                         "deployed": train.deployed("SUCCEEDED", approved)})
    assert "v3 approved: the predict function serves it" in capsys.readouterr().out
