"""The model artifact: ONNX export checked against torch, and the endpoint's ``code/`` folder.

``model.tar.gz`` deploys as is: the inference toolkit finds ``code/inference.py`` (with the one
normaliser beside it), and the serving dependencies lie unpacked in ``code/lib`` for the image's Python
and platform, which ``inference.py`` puts first on ``sys.path``. There is no ``code/requirements.txt``:
the toolkit pip-installs one at every container start when it exists (``sagemaker_inference.model_server``,
7.3 s on 2 cores for these wheels), and endpoints run without internet anyway.
"""

from __future__ import annotations

import compileall
import copy
import json
import re
import shutil
import sys
import zipfile
from pathlib import Path

import networks
import numpy as np
import torch
from networks import Classifier, Exported

ONNX_FILE = "model.onnx"
ONNX_OPSET = 17
ONNX_OUTPUTS = ["logits", "cams", "features"]
"""Older artifacts have the first two only: they serve without an out-of-distribution score."""
CODE_FILES = ("inference.py", "imaging.py", "decision.py", "ood.py")
SERVING_WHEELS = "serving-wheels.txt"
"""Written by the packager into the source dir: the wheels (and requirement) the endpoint needs."""
LIB_DIR = "lib"
"""``code/lib``: the serving wheels unpacked, as ``pip install --target`` lays them out."""
LIB_PYTHON_FILE = "python-version.txt"
"""``code/lib/python-version.txt``: the ``major.minor`` the unpacked wheels were built for; ``inference.py``
adds ``code/lib`` only under that Python (the offline cloud loads the same artifact under its own)."""
_CPYTHON_TAG = re.compile(r"-cp(\d)(\d+)-cp\d+[dmu]*-")


def load_torch_model(model_dir: Path) -> tuple[Classifier, dict]:
    """A model directory's network in torch (eval mode) and its ``model.json``: for checks and benchmarks."""
    config = json.loads((Path(model_dir) / "model.json").read_text())
    model = networks.build(config["architecture"], len(config["classes"]), config["width"],
                           members=config.get("ensemble", 1))  # models from before ensembles have none
    model.load_state_dict(torch.load(Path(model_dir) / "model.pt", map_location="cpu"))
    return model.eval(), config


def export_onnx(model: Classifier, size: int, path: Path) -> None:
    """Outputs ``logits``, ``cams`` and ``features`` (:class:`networks.Exported`); dynamic batch.
    TorchScript exporter (no onnxscript needed). Exports a CPU copy: a model trained on a GPU stays there."""
    model = cpu_copy(model).to(memory_format=torch.contiguous_format)
    example = torch.rand(1, 1, size, size)
    torch.onnx.export(
        Exported(model), (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
        input_names=["image"], output_names=ONNX_OUTPUTS,
        dynamic_axes={name: {0: "batch"} for name in ["image", *ONNX_OUTPUTS]},
    )


def check_onnx(model: Classifier, path: Path, images: torch.Tensor) -> float:
    """Largest absolute logit difference between ONNX Runtime and torch on real images; raises if the
    logits or the guard's features are off."""
    import onnxruntime as ort

    model = cpu_copy(model)
    with torch.no_grad():
        logits, _, features = (t.numpy() for t in Exported(model)(images.float()))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got, got_features = session.run(["logits", "features"], {"image": images.float().numpy()})
    diff = float(np.abs(got - logits).max())
    if not np.allclose(got, logits, atol=1e-3, rtol=1e-3):
        raise RuntimeError(f"ONNX export disagrees with torch: max |logit difference| {diff:.2e}")
    if not np.allclose(got_features, features, atol=1e-3, rtol=1e-3):
        raise RuntimeError("ONNX export disagrees with torch on the guard features: "
                           f"max |difference| {np.abs(got_features - features).max():.2e}")
    return diff


def cpu_copy(model: Classifier) -> Classifier:
    """An eval-mode float32 copy on the CPU, for what runs after training wherever it trained."""
    return copy.deepcopy(model).float().eval().cpu()


def write_code_dir(source_dir: Path, model_dir: Path) -> list[str]:
    """Copy the handler and the normaliser into ``model_dir/code`` and unpack the serving wheels into
    ``code/lib``; returns the file names."""
    code = model_dir / "code"
    code.mkdir(parents=True, exist_ok=True)
    for name in CODE_FILES:
        shutil.copyfile(source_dir / name, code / name)  # copyfile follows the imaging.py symlink
    listing = source_dir / SERVING_WHEELS
    if listing.exists():
        wheels = [line.strip() for line in listing.read_text().splitlines() if line.strip().endswith(".whl")]
        unpack_wheels([source_dir / "wheels" / wheel for wheel in wheels], code / LIB_DIR)
    return sorted(p.relative_to(code).as_posix() for p in code.rglob("*") if p.is_file())


def unpack_wheels(wheels: list[Path], lib: Path) -> None:
    """Install ``wheels`` into ``lib`` as ``pip install --target`` would, without pip.

    A wheel is a zip of its import tree plus ``<name>.data/``, whose ``purelib`` and ``platlib`` also belong
    in site-packages (PEP 427, "Installing a wheel"); its ``scripts`` and ``headers`` do not serve a model.
    Records which CPython the wheels were built for (their ``cpXY`` tag).
    """
    shutil.rmtree(lib, ignore_errors=True)
    lib.mkdir(parents=True)
    versions = set()
    for wheel in wheels:
        tag = _CPYTHON_TAG.search(wheel.name)
        if tag:
            versions.add(f"{tag.group(1)}.{tag.group(2)}")
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                parts = Path(member.filename).parts
                if member.is_dir() or ".." in parts:
                    continue
                if parts[0].endswith(".data"):
                    if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                        continue
                    parts = parts[2:]
                target = lib.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, target.open("wb") as out:
                    shutil.copyfileobj(source, out)
    if len(versions) > 1:
        raise ValueError(f"serving wheels built for several Pythons: {sorted(versions)}")
    if versions:
        version = versions.pop()
        (lib / LIB_PYTHON_FILE).write_text(version + "\n")
        if version == f"{sys.version_info[0]}.{sys.version_info[1]}":  # the job runs the image's Python: as pip
            # does at install, compile the bytecode now, so that no container start compiles it (or cannot write it)
            compileall.compile_dir(str(lib), quiet=1, workers=0)
