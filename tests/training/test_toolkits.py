"""The real consumers: SageMaker's training toolkit runs our sourcedir.tar.gz, its inference toolkit serves our model.

Both toolkits are the PyPI packages the SageMaker PyTorch images run, driven the way the images drive them:
``train`` with ``SAGEMAKER_BASE_DIR`` pointing at a temporary ``/opt/ml`` tree, and the inference
handler service in a fresh process whose ``PYTHONPATH`` holds ``model/code`` as the model server sets it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from synthetic import encode, xray

from infra import packaging

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def sourcedir(module_dir) -> Path:
    """The real archive, with wheels for this interpreter so the toolkit can install them here, offline."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return packaging.build_sourcedir(module_dir("sourcedir"), python_version=version)


def test_sourcedir_holds_the_code_the_wheels_and_an_offline_requirements_file(sourcedir):
    with tarfile.open(sourcedir) as archive:
        members = {m.name: m for m in archive.getmembers()}
        requirements = archive.extractfile("requirements.txt").read().decode().splitlines()
        serving = archive.extractfile("serving-wheels.txt").read().decode().split()
    for name in ("train.py", "inference.py", "imaging.py", "networks.py", "metrics.py"):
        assert members[name].isfile(), name  # imaging.py is the dereferenced symlink
    assert requirements[:2] == ["--no-index", "--find-links wheels"]
    assert "onnxruntime==1.32.0" in requirements and not any(r.startswith("torch") for r in requirements)
    wheels = {Path(n).name for n in members if n.startswith("wheels/")}
    assert any(w.startswith("onnxruntime-1.32.0") for w in wheels)
    assert {w for w in serving if w.endswith(".whl")} <= wheels
    assert packaging.build_sourcedir(sourcedir.parent / "again", python_version=f"{sys.version_info[0]}."
                                     f"{sys.version_info[1]}").read_bytes() == sourcedir.read_bytes()


@pytest.fixture(scope="module")
def toolkit_job(sourcedir, staged, module_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """The training toolkit's ``train`` entry point run on the sourcedir: its ``/opt/ml`` tree and the run."""
    from synthetic import TINY_HPS

    tmp_path = module_dir("toolkit")
    base = tmp_path / "opt_ml"
    config = base / "input" / "config"
    config.mkdir(parents=True)
    for name, channel in staged.channels.items():
        shutil.copytree(channel, base / "input" / "data" / name)
    hyperparameters = {k: json.dumps(v) for k, v in TINY_HPS.items()}
    hyperparameters.update(sagemaker_program=json.dumps("train.py"),
                           sagemaker_submit_directory=json.dumps(str(sourcedir)))
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "inputdataconfig.json").write_text(json.dumps({
        name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
        for name in staged.channels}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "localhost", "hosts": ["localhost"], "network_interface_name": "lo"}))
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SM_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
           "PIP_NO_INDEX": "1"}
    return base, subprocess.run([str(BIN / "train")], env=env, capture_output=True, text=True, timeout=600)


def test_sagemaker_training_toolkit_runs_train_py_from_the_sourcedir(toolkit_job):
    base, run = toolkit_job
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Installing dependencies from requirements.txt" in run.stdout + run.stderr
    model = base / "model"
    for name in ("model.onnx", "model.json", "metrics.json", "code/inference.py", "code/imaging.py",
                 "code/lib/onnxruntime/__init__.py", "code/lib/PIL/__init__.py"):
        assert (model / name).is_file(), name
    # the serving dependencies ship unpacked: nothing for the inference toolkit to pip-install at start-up
    assert not (model / "code" / "requirements.txt").exists()
    assert not (model / "code" / "wheels").exists()
    assert (model / "code" / "lib" / "python-version.txt").read_text().strip() == (
        f"{sys.version_info.major}.{sys.version_info.minor}")
    assert (base / "output" / "data" / "metrics.json").is_file()
    assert (base / "code" / "train.py").is_file()  # the toolkit unpacked our archive and ran it


START = """
import importlib.resources, json, os, subprocess, sys, time, types
# the toolkit finds its config files with setuptools' pkg_resources, which the image has and this venv lacks
sys.modules["pkg_resources"] = types.SimpleNamespace(
    resource_filename=lambda package, name: str(importlib.resources.files(package) / name.lstrip("/")))
from sagemaker_pytorch_serving_container import torchserve

launched, checked = [], []
torchserve.TS_CONFIG_FILE = sys.argv[1]  # /etc/sagemaker-ts.properties in the image
subprocess.Popen = lambda cmd, **kwargs: launched.append(cmd)  # the JVM: TorchServe is not installed here
subprocess.check_call = lambda cmd, **kwargs: checked.append(cmd)  # pip, if the toolkit wanted it
torchserve._retrieve_ts_server_process = lambda: type("Server", (), {"wait": lambda self: None, "pid": 0})()
torchserve._add_sigterm_handler = lambda process: None
started = time.perf_counter()
torchserve.start_torchserve()
print(json.dumps({"launched": launched, "checked": checked, "seconds": time.perf_counter() - started,
                  "pythonpath": os.environ["PYTHONPATH"]}))
"""


def test_inference_toolkit_starts_without_pip_and_serves_with_the_unpacked_dependencies(toolkit_job, tmp_path):
    """``start_torchserve``, the image's entry point, pip-installs ``code/requirements.txt`` when there is one
    (``sagemaker_inference.model_server._install_requirements``): the artifact has none, so start-up goes
    straight to the model server, whose worker then serves with ``code/lib``'s packages."""
    base, run = toolkit_job
    assert run.returncode == 0, run.stderr[-3000:]
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base)}
    env.pop("PYTHONPATH", None)
    start = subprocess.run([sys.executable, "-c", START, str(tmp_path / "ts.properties")], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr[-3000:]
    assert "installing packages from requirements.txt" not in start.stdout + start.stderr
    started = json.loads(start.stdout.strip().splitlines()[-1])
    assert started["checked"] == [], started  # no pip (nor any other command) before the model server
    assert [cmd[0] for cmd in started["launched"]] == ["torchserve"]
    assert started["pythonpath"] == str(base / "model" / "code")

    image = tmp_path / "xray.jpeg"
    image.write_bytes(encode(xray("viral", np.random.default_rng(2), size=(300, 280)), "JPEG"))
    served = subprocess.run([sys.executable, "-c", SERVE + WHERE, str(base / "model"), str(image)],
                            env={**env, "PYTHONPATH": started["pythonpath"]}, capture_output=True, text=True,
                            timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    *answers, where = served.stdout.strip().splitlines()
    assert json.loads(json.loads(answers[-1])["body"])["label"] in ("bacterial", "normal", "viral")
    lib = base / "model" / "code" / "lib"
    assert all(Path(path).is_relative_to(lib) for path in json.loads(where).values()), where


SERVE = """
import json, sys
from sagemaker_pytorch_serving_container.handler_service import HandlerService

class Processor:
    def __init__(self, headers): self.headers = headers
    def get_request_properties(self): return self.headers

class Context:
    def __init__(self, model_dir, headers):
        self.system_properties = {"model_dir": model_dir, "gpu_id": None}
        self.request_processor = [Processor(headers)]
        self.model_name = "model"
        self.status, self.content_type = None, None
    def set_response_status(self, code, phrase): self.status = (code, phrase)
    def set_response_content_type(self, index, value): self.content_type = value

model_dir = sys.argv[1]
service = HandlerService()
for path in sys.argv[2:]:  # one request per file, each with its own context as the model server gives it
    context = Context(model_dir, {"Content-Type": "image/jpeg", "Accept": "application/json"})
    service.initialize(context)
    response = service.handle([{"body": open(path, "rb").read()}], context)
    body = response[0].decode() if isinstance(response[0], bytes) else response[0]
    print(json.dumps({"status": context.status, "content_type": context.content_type, "body": body}))
"""
WHERE = """
print(json.dumps({name: sys.modules[name].__file__ for name in ("onnxruntime", "PIL")}))
"""


def test_sagemaker_inference_toolkit_serves_the_model_dir_and_answers_a_rejected_input_with_400(trained, tmp_path):
    image, pdf = tmp_path / "xray.jpeg", tmp_path / "scan.jpeg"
    image.write_bytes(encode(xray("bacterial", np.random.default_rng(1), size=(320, 260)), "JPEG"))
    pdf.write_bytes(b"%PDF-1.4\n" + bytes(2048))  # sent as image/jpeg: the normaliser rejects it by its bytes
    env = {**os.environ, "PYTHONPATH": str(trained / "model" / "code")}
    run = subprocess.run([sys.executable, "-c", SERVE, str(trained / "model"), str(image), str(pdf)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result, rejected = (json.loads(line) for line in run.stdout.strip().splitlines()[-2:])
    assert result["status"] is None, result  # no error status was set
    assert result["content_type"] == "application/json"
    prediction = json.loads(result["body"])
    assert prediction["label"] in ("bacterial", "normal", "viral")
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    code, phrase = rejected["status"]
    assert code == 400, rejected  # a client error, not the toolkit's 500 for an unexpected exception
    assert phrase.startswith("unsupported_format: PDF") and "Traceback" not in phrase
    reason = rejected["body"].splitlines()[0]  # the toolkit's body: the message, then its own traceback
    assert reason.startswith("unsupported_format: PDF") and "Traceback" not in reason
