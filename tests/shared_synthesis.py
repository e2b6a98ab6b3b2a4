"""One CDK synthesis per test run, not one per pytest-xdist worker.

``make test`` runs test files in several worker processes, and each process builds its own session fixtures,
so every worker that runs an infra or offline-cloud file would synthesize the same app again (about 25 s of
CPU each). Here the first worker to ask synthesizes into a folder shared by the run's workers (the parent of
each worker's base temporary folder: pytest-xdist's documented way of running a session fixture once,
"Making session-scoped fixtures execute only once"); the others wait on a file lock and read that folder.
Without xdist the fixture simply synthesizes into its own temporary folder.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

DONE = ".synthesized"


def synthesized_once(tmp_path_factory, name: str, synthesize: Callable[[Path], None]) -> Path:
    """The folder ``synthesize(folder)`` filled: in this run, by this worker or by another one."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        outdir = tmp_path_factory.mktemp(name)
        synthesize(outdir)
        return outdir
    shared = tmp_path_factory.getbasetemp().parent  # pytest-N/, one per run; each worker has popen-gwK/ in it
    outdir = shared / name
    with (shared / f"{name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when synthesis raises
        if not (outdir / DONE).exists():
            outdir.mkdir(exist_ok=True)
            synthesize(outdir)
            (outdir / DONE).touch()
    return outdir
