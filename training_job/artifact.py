"""The model artifact: ONNX export checked against torch, and the endpoint's ``code/`` folder.

``model.tar.gz`` deploys as is: the inference toolkit finds ``code/inference.py`` (with the one
normaliser beside it) and installs ``code/requirements.txt`` from the wheels in ``code/wheels``
with no index, because endpoints run without internet.
"""

from __future__ import annotations

import copy
import json
import shutil
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


def load_torch_model(model_dir: Path) -> tuple[Classifier, dict]:
    """A model directory's network in torch (eval mode) and its ``model.json``: for checks and benchmarks."""
    config = json.loads((Path(model_dir) / "model.json").read_text())
    model = networks.build(config["architecture"], len(config["classes"]), config["width"])
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
    """Copy the handler, the normaliser and the serving wheels into ``model_dir/code``; returns file names."""
    code = model_dir / "code"
    code.mkdir(parents=True, exist_ok=True)
    for name in CODE_FILES:
        shutil.copyfile(source_dir / name, code / name)  # copyfile follows the imaging.py symlink
    listing = source_dir / SERVING_WHEELS
    if listing.exists():
        lines = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        requirements = [line for line in lines if not line.endswith(".whl")]
        wheels = [line for line in lines if line.endswith(".whl")]
        (code / "wheels").mkdir(exist_ok=True)
        for wheel in wheels:
            shutil.copyfile(source_dir / "wheels" / wheel, code / "wheels" / wheel)
        # pip resolves a relative --find-links against the requirements file's own folder.
        (code / "requirements.txt").write_text("--no-index\n--find-links wheels\n" + "\n".join(requirements) + "\n")
    return sorted(p.relative_to(code).as_posix() for p in code.rglob("*") if p.is_file())
