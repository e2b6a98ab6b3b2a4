"""The model's serving dependencies ship unpacked in ``code/lib`` (no pip at container start), used only under the
Python they were built for. The real toolkits run them in ``test_toolkits.py``; these checks are fast."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cxr import jobcode

ROOT = Path(__file__).resolve().parents[2]
HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"


def wheel(folder: Path, name: str, files: dict[str, str]) -> Path:
    path = folder / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def test_wheels_unpack_as_pip_install_target_lays_them_out(tmp_path):
    artifact = jobcode.load("artifact")
    native = wheel(tmp_path, f"demo-1.0-{TAG}-{TAG}-manylinux_2_28_x86_64.whl", {
        "demo/__init__.py": "VALUE = 1\n", "demo-1.0.data/platlib/demo_ext.py": "EXT = 2\n",
        "demo-1.0.data/scripts/demo-cli": "#!/bin/sh\n", "demo-1.0.data/headers/demo.h": "",
        "demo-1.0.dist-info/METADATA": "Name: demo\n"})
    pure = wheel(tmp_path, "plain-2.0-py3-none-any.whl", {"plain.py": "P = 3\n", "../escape.py": "x = 1\n"})
    lib = tmp_path / "code" / "lib"
    artifact.unpack_wheels([native, pure], lib)
    files = sorted(p.relative_to(lib).as_posix() for p in lib.rglob("*") if p.is_file())
    assert [f for f in files if "__pycache__" not in f] == [
        "demo-1.0.dist-info/METADATA", "demo/__init__.py", "demo_ext.py", "plain.py", "python-version.txt"]
    # built for this Python: compiled now, as pip compiles at install, so no container start compiles it
    assert (lib / "demo" / "__pycache__").is_dir() and any(f.startswith("__pycache__/plain.") for f in files)
    assert (lib / "python-version.txt").read_text().strip() == HERE
    other = wheel(tmp_path, "other-1.0-cp39-cp39-manylinux_2_28_x86_64.whl", {"other.py": ""})
    with pytest.raises(ValueError, match="several Pythons"):
        artifact.unpack_wheels([native, other], tmp_path / "mixed")


def test_code_dir_has_no_requirements_file_and_inference_imports_from_lib(tmp_path):
    """The code folder the job writes: ``lib/`` instead of a ``requirements.txt`` and wheels; ``inference.py``
    puts ``lib`` first under its Python and leaves the path alone under another (the offline cloud's)."""
    artifact = jobcode.load("artifact")
    source = tmp_path / "source"
    shutil.copytree(ROOT / "training_job", source)
    (source / "wheels").mkdir()
    wheel(source / "wheels", f"marker-1.0-{TAG}-{TAG}-manylinux_2_28_x86_64.whl", {"marker.py": "WHERE = 'lib'\n"})
    (source / artifact.SERVING_WHEELS).write_text(f"marker==1.0\nmarker-1.0-{TAG}-{TAG}-manylinux_2_28_x86_64.whl\n")
    model = tmp_path / "model"
    artifact.write_code_dir(source, model)
    code = model / "code"
    assert not (code / "requirements.txt").exists() and not (code / "wheels").exists()
    probe = ("import sys, json; sys.path.insert(0, sys.argv[1]); import inference, importlib.util; "
             "print(json.dumps([sys.path[0], importlib.util.find_spec('marker') is not None]))")
    found = subprocess.run([sys.executable, "-c", probe, str(code)], capture_output=True, text=True, check=True)
    assert json.loads(found.stdout) == [str(code / "lib"), True]
    (code / "lib" / "python-version.txt").write_text("3.1\n")  # built for another Python: not on the path
    found = subprocess.run([sys.executable, "-c", probe, str(code)], capture_output=True, text=True, check=True)
    assert json.loads(found.stdout) == [str(code), False]


def test_the_endpoint_decodes_the_stored_png_once_and_never_encodes_it_again(trained, monkeypatch):
    """The predict function sends the stored PNG it normalised: the handler decodes it once (the normaliser's
    checks included) and predicts from those pixels, with no second decode and no PNG encoding (explanations
    aside, which draw one PNG)."""
    from PIL import Image
    from synthetic import encode, xray

    inference = jobcode.load("inference", trained / "model" / "code")
    model = inference.model_fn(str(trained / "model"))
    stored = inference.imaging.normalise(encode(xray("normal", np.random.default_rng(3), size=(900, 700)),
                                                "JPEG")).png
    opened, saved = [], []
    real_open, real_save = Image.open, Image.Image.save
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append(1) or real_open(*args, **kwargs))
    monkeypatch.setattr(Image.Image, "save", lambda self, *args, **kwargs: saved.append(1) or real_save(
        self, *args, **kwargs))
    answer = inference.predict_fn(inference.input_fn(stored, "image/png"), model)
    assert (len(opened), len(saved)) == (1, 0)
    assert answer["content_hash"] == inference.imaging.normalise(stored).content_hash


def test_training_writes_an_int8_model_and_serves_it_only_within_half_a_point_of_fp32(trained, tmp_path):
    """Both validation accuracies in ``metrics.json``; ``model.json`` names the INT8 file exactly when it is served,
    and the handler answers from it."""
    model = trained / "model"
    int8 = json.loads((model / "metrics.json").read_text())["int8"]
    config = json.loads((model / "model.json").read_text())
    assert (model / "model.int8.onnx").is_file() and int8["calibration_images"] > 0
    assert int8["served"] == (int8["validation_accuracy"] >= int8["fp32_validation_accuracy"] - 0.005)
    assert config["onnx"] == ("model.int8.onnx" if int8["served"] else "model.onnx")
    assert config["onnx_fp32"] == "model.onnx"

    quantize = jobcode.load("quantize")
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    images = np.random.default_rng(0).random((20, 1, config["image_size"], config["image_size"]), dtype=np.float32)
    fp32 = quantize.logits(copy / "model.onnx", images)
    # an accuracy that falls by more than half a point on the quantized logits: FP32 serves
    worse = quantize.choose(copy, "model.onnx", images, images,
                            lambda logits: 1.0 if np.array_equal(logits, fp32) else 0.99)
    assert worse["served"] is False and worse["fp32_validation_accuracy"] == 1.0
    assert (copy / "model.int8.onnx").is_file()


@pytest.fixture(scope="module")
def int8_served(staged, module_dir) -> Path:
    """A tiny model trained with ``int8-max-drop`` 1, so that its INT8 file serves whatever its accuracy."""
    from synthetic import TINY_HPS

    from cxr import training_run

    return training_run.run_training_job(staged.channels, {**TINY_HPS, "epochs": 1, "int8-max-drop": 1},
                                         module_dir("int8-job"))


def test_when_int8_serves_the_guard_is_fitted_on_the_int8_graphs_features(int8_served, staged):
    """The endpoint scores the served file's ``features``; quantization moves them (bench/RESULTS.md), so a guard
    fitted on FP32 features would hold a threshold for features it never sees."""
    config = json.loads((int8_served / "model.json").read_text())
    assert config["onnx"] == "model.int8.onnx"
    train, quantize, ood = (jobcode.load(name) for name in ("train", "quantize", "ood"))
    args = SimpleNamespace(train=staged.channels["train"], validation=staged.channels["validation"], test=None,
                           image_size=config["image_size"], resize_policy=config["resize_policy"],
                           intensity=config["intensity"])
    splits, _ = train.load_channels(args, config["classes"])
    features = {name: quantize.logits(int8_served / "model.int8.onnx", split.inputs, output="features")
                for name, split in splits.items()}
    expected = ood.fit(features["train"], splits["train"].targets.numpy(), features["validation"])
    saved = ood.load(int8_served / ood.FILE)
    np.testing.assert_allclose(saved.means, expected.means, rtol=1e-4, atol=1e-5)
    assert saved.threshold == pytest.approx(expected.threshold, rel=1e-4)
    assert config["out_of_distribution"]["threshold"] == pytest.approx(saved.threshold)
