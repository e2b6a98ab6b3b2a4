"""The code version a deployment records: the project's version and, when packaged from a git checkout, its commit.

Computed once when the app is synthesized (the moment the functions and the training code are
packaged) and handed to the functions as ``CXR_CODE_VERSION`` (``lambdas.domain.audit``), so each
prediction record and gate report names the code that made it. A tree with uncommitted changes is
marked ``.dirty``: its commit alone would not reproduce it.
"""

from __future__ import annotations

import functools
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@functools.cache
def code_version() -> str:
    """``0.1.0+g<commit>[.dirty]`` (PEP 440 local version), or ``0.1.0`` outside a git checkout."""
    version = project_version()
    try:
        commit = _git("rev-parse", "--short=12", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return version
    return f"{version}+g{commit}{'.dirty' if dirty else ''}"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()
