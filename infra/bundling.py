"""Lambda code bundled on this machine, for the function's architecture, without Docker.

pip installs ``requirements/lambda.txt`` as manylinux wheels for the Lambda runtime's Python and
CPU (``--only-binary``: nothing is compiled here), then the ``lambdas`` package is copied beside
them. Both steps are cached under ``.cache/`` keyed by their inputs, so a synthesis after the first
copies a folder instead of calling pip.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements" / "lambda.txt"
SERVING_REQUIREMENTS = ROOT / "requirements" / "lambda-serving.txt"
"""ONNX Runtime for the predict function's layer (``endpoint_mode=lambda``); layers unpack under ``/opt``, and
``/opt/python`` is on the Python runtimes' path (Lambda Developer Guide, "Layer paths for each Lambda runtime")."""
PACKAGE = ROOT / "lambdas"
CACHE = ROOT / ".cache" / "lambda"
RUNTIME = lambda_.Runtime.PYTHON_3_14
PYTHON_VERSION = "3.14"
PLATFORMS = {
    "x86_64": ("manylinux2014_x86_64", "manylinux_2_28_x86_64"),
    "arm64": ("manylinux2014_aarch64", "manylinux_2_28_aarch64"),
}
ARCHITECTURES = {"x86_64": lambda_.Architecture.X86_64, "arm64": lambda_.Architecture.ARM_64}
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:20]


def source_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def dependencies_key(architecture: str) -> str:
    return _digest(REQUIREMENTS.read_bytes(), architecture.encode(), PYTHON_VERSION.encode())


def bundle_key(architecture: str) -> str:
    sources = [part for p in source_files() for part in (str(p.relative_to(ROOT)).encode(), p.read_bytes())]
    return _digest(dependencies_key(architecture).encode(), *sources)


def dependencies(architecture: str) -> Path:
    """The installed wheels for one architecture, built once per requirements file."""
    target = CACHE / f"deps-{architecture}-{dependencies_key(architecture)}"
    if target.is_dir():
        return target
    staging = _staging(target)
    _pip_install(REQUIREMENTS, architecture, staging)
    _publish(staging, target)
    _prune(f"deps-{architecture}-*", keep=target)
    return target


def serving_layer(architecture: str) -> Path:
    """ONNX Runtime installed under ``python/`` for the runtime's Python and CPU, built once per requirements file."""
    key = _digest(SERVING_REQUIREMENTS.read_bytes(), architecture.encode(), PYTHON_VERSION.encode())
    target = CACHE / f"serving-{architecture}-{key}"
    if target.is_dir():
        return target
    staging = _staging(target)
    _pip_install(SERVING_REQUIREMENTS, architecture, staging / "python", "--no-deps")
    shutil.rmtree(staging / "python" / "bin", ignore_errors=True)  # console scripts: nothing in a layer runs them
    _publish(staging, target)
    _prune(f"serving-{architecture}-*", keep=target)
    return target


def serving_layer_code(architecture: str) -> lambda_.Code:
    """The layer asset, hashed by its inputs (the folder is only built and copied when a stack asks for it)."""
    folder = serving_layer(architecture)
    return lambda_.Code.from_asset(str(folder), asset_hash_type=AssetHashType.CUSTOM,
                                   asset_hash=folder.name.removeprefix("serving-"))


def bundle(architecture: str) -> Path:
    """Dependencies plus the ``lambdas`` package: the folder every function's asset is made from."""
    target = CACHE / f"bundle-{architecture}-{bundle_key(architecture)}"
    if target.is_dir():
        return target
    staging = _staging(target)
    shutil.copytree(dependencies(architecture), staging, ignore=_IGNORED, dirs_exist_ok=True)
    shutil.copytree(PACKAGE, staging / PACKAGE.name, ignore=_IGNORED)
    _publish(staging, target)
    _prune(f"bundle-{architecture}-*", keep=target)  # each source edit makes a new ~80 MB bundle
    return target


def _pip_install(requirements: Path, architecture: str, target: Path, *options: str) -> None:
    """Install ``requirements`` into ``target`` as manylinux wheels for the runtime's Python and ``architecture``."""
    platforms = [arg for platform in PLATFORMS[architecture] for arg in ("--platform", platform)]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile", *options,
         *platforms, "--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON_VERSION,
         "--target", str(target), "-r", str(requirements)],
        check=True,
    )


def _staging(target: Path) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{target.name}.", suffix=".partial", dir=CACHE))


def _prune(pattern: str, keep: Path) -> None:
    for stale in CACHE.glob(pattern):
        if stale != keep and not stale.name.endswith(".partial"):
            shutil.rmtree(stale, ignore_errors=True)


def _publish(staging: Path, target: Path) -> None:
    """Atomically move a finished folder into the cache; a concurrent build that won is as good."""
    try:
        staging.rename(target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)


@jsii.implements(ILocalBundling)
class LocalBundling:
    """CDK's hook for bundling without Docker: copy the cached bundle into the asset folder."""

    def __init__(self, architecture: str):
        self.architecture = architecture

    def try_bundle(self, output_dir: str, *, image, **_options) -> bool:
        shutil.copytree(bundle(self.architecture), output_dir, dirs_exist_ok=True)
        return True


def code(architecture: str) -> lambda_.Code:
    """The Lambda code asset, hashed by its inputs so an unchanged bundle is not uploaded again."""
    return lambda_.Code.from_asset(
        str(PACKAGE),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=bundle_key(architecture),
        bundling=BundlingOptions(
            image=DockerImage.from_registry("public.ecr.aws/sam/build-python3.14"),  # never pulled: local wins
            local=LocalBundling(architecture),
        ),
    )
