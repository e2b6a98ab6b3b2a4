"""Simulated SageMaker training hosts: one ``/opt/ml`` tree per host, the PyTorch container's entry run in each.

A multi-instance training job is N containers named ``algo-1`` ... ``algo-N`` (sorted; ``algo-1`` is
the master) that find each other by those names. Each gets the files AWS documents for a training
container (https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-training-algo-running-container.html):
``input/config/hyperparameters.json``, ``inputdataconfig.json`` and ``resourceconfig.json`` (current
host, all hosts, instance groups, network interface), and its channels under ``input/data/``. The
container's entry is sagemaker-training's ``train`` with ``SAGEMAKER_TRAINING_MODULE`` naming
sagemaker-pytorch-training's ``training:main``, as the PyTorch training image sets it; with
``sagemaker_torch_distributed_enabled`` that module launches ``train.py`` through ``torchrun``.

Here each host is a CPU-only process tree on this machine with ``SAGEMAKER_BASE_DIR`` pointing at its
own tree, and ``/etc/hosts`` maps every ``algo-N`` to the loopback address (the toolkit blocks until each
host name resolves, and torchrun's store dials ``algo-1`` by name).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

TRAINING_MODULE = "sagemaker_pytorch_container.training:main"
"""``ENV SAGEMAKER_TRAINING_MODULE`` of AWS's PyTorch training images (deep-learning-containers Dockerfiles)."""
TRAIN = Path(sys.executable).parent / "train"
"""sagemaker-training's console script: the training image's entry point."""
HOSTS_FILE = Path("/etc/hosts")
CONTAINER_ROOT = "/opt/ml/"
"""Where the container's tree is; each simulated host's folder stands in for it."""
LOCK_FILE = Path(tempfile.gettempdir()) / "cxr-simulated-hosts.lock"
INSTANCE_GROUP = "homogeneousCluster"
"""The group name SageMaker gives a job's hosts when the request has no instance groups."""


def host_names(count: int) -> list[str]:
    return [f"algo-{i}" for i in range(1, count + 1)]


def ensure_resolvable(names: list[str], hosts_file: Path = HOSTS_FILE) -> None:
    """Add a loopback entry for each simulated host name that ``hosts_file`` lacks."""
    known = {name for line in hosts_file.read_text().splitlines() if line.strip() and not line.startswith("#")
             for name in line.split()[1:]}
    missing = [name for name in names if name not in known]
    if not missing:
        return
    try:
        with hosts_file.open("a") as out:
            out.write(f"127.0.0.1 {' '.join(missing)}  # cxr offline cloud: simulated SageMaker hosts\n")
    except PermissionError:
        raise RuntimeError(f"the simulated training hosts {missing} need entries in {hosts_file}: add "
                           f"'127.0.0.1 {' '.join(missing)}' (as root) and run again") from None


def write_config(base: Path, *, host: str, hosts: list[str], instance_type: str, hyperparameters: Mapping[str, str],
                 channels: Mapping[str, Mapping[str, str]]) -> None:
    """One host's ``input/config``: ``channels`` maps a name to its ``TrainingInputMode`` and
    ``S3DistributionType``; hyperparameter values are the JSON-encoded strings of the request."""
    config = base / "input" / "config"
    for folder in (config, base / "model", base / "output" / "data", base / "checkpoints"):  # as the container has
        folder.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(dict(hyperparameters)))
    (config / "inputdataconfig.json").write_text(json.dumps({
        name: {**settings, "RecordWrapperType": "None"} for name, settings in channels.items()}))
    (config / "resourceconfig.json").write_text(json.dumps({
        "current_host": host, "current_instance_type": instance_type, "current_group_name": INSTANCE_GROUP,
        "hosts": hosts, "network_interface_name": "lo",
        "instance_groups": [{"instance_group_name": INSTANCE_GROUP, "instance_type": instance_type, "hosts": hosts}],
    }))


def launch(base: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start one host's container entry (its own process group, so that a stop reaches torchrun and its ranks);
    stdout and stderr go to ``base/train.log``."""
    environment = {
        **os.environ, **(env or {}),
        "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_TRAINING_MODULE": TRAINING_MODULE,
        "SM_CHECKPOINT_DIR": str(base / "checkpoints"),
        "PIP_NO_INDEX": "1",  # the sourcedir's requirements.txt installs its vendored wheels, as under isolation
        "GLOO_SOCKET_IFNAME": "lo", "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "",  # CPU hosts (gloo): simulated hosts sharing one GPU would each claim cuda:0
        # torchrun beside the interpreter, as on the image's PATH
        "PATH": os.pathsep.join([str(TRAIN.parent), (env or os.environ).get("PATH", os.defpath)]),
    }
    log = (base / "train.log").open("w")
    try:
        return subprocess.Popen([str(TRAIN)], cwd=base, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        log.close()


def wait_all(processes: Mapping[str, subprocess.Popen], bases: Mapping[str, Path],
             timeout: float | None = None) -> None:
    """Wait for every host; raise with the first failed host's last log lines. A host succeeded when it exited 0
    and its toolkit wrote ``output/success``, as the container contract has it."""
    failed = {host: p.wait(timeout) for host, p in processes.items()}
    for process in processes.values():
        wait_for_group(process.pid)
    for host, code in failed.items():
        if code != 0 or not (bases[host] / "output" / "success").exists():
            tail = (bases[host] / "train.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"host {host} exited with status {code}: {' | '.join(tail)}")


def wait_for_group(pgid: int, poll_s: float = 0.2) -> None:
    """Until no process of the host's group is left: the entry dies at once on SIGTERM (sagemaker-training has no
    handler), while torchrun and the ranks still checkpoint."""
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(poll_s)


class Cluster:
    """The hosts of one job, seen as one process by the offline cloud's stop (SIGTERM to every host's group,
    as SageMaker stops every container; torchrun passes it on to its ranks)."""

    def __init__(self, processes: Mapping[str, subprocess.Popen]):
        self.processes = dict(processes)

    def poll(self) -> int | None:
        codes = [p.poll() for p in self.processes.values()]
        return None if None in codes else max(codes, key=abs)

    def send_signal(self, signum: int) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signum)


@contextlib.contextmanager
def exclusive(lock_file: Path = LOCK_FILE):
    """One simulated cluster at a time on this machine: every one is ``algo-1`` ... with torchrun's store on
    ``algo-1:7777`` (the toolkit's fixed port), so two at once would meet on the same address (parallel tests)."""
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sharded_by_s3_key(files: list[str], host_index: int, hosts: int) -> list[str]:
    """A host's part of a ``ShardedByS3Key`` channel: every ``hosts``-th object in S3 key order, from its own index.
    AWS documents only that "each instance gets approximately 1/n of the number of S3 objects" (CreateTrainingJob,
    ``S3DataSource``), not which: train.py must not rely on this rule, only on the shares being disjoint."""
    return sorted(files)[host_index::hosts]


def _place_channel(channel: Path, target: Path, distribution: str, host_index: int, hosts: int) -> None:
    """Hard links of what the host gets: the whole channel, or its ``ShardedByS3Key`` part. ``FastFile`` channels
    are placed the same way (SageMaker mounts them; a link is what a mount reads like)."""
    if distribution != "ShardedByS3Key":
        shutil.copytree(channel, target, copy_function=os.link)
        return
    files = [str(p.relative_to(channel)) for p in channel.rglob("*") if p.is_file()]
    for relative in sharded_by_s3_key(files, host_index, hosts):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        os.link(channel / relative, target / relative)
    target.mkdir(parents=True, exist_ok=True)


def run_job(job_dir: Path, *, resources: Mapping, hyperparameters: Mapping[str, str], input_data_config: list[dict],
            channels: Mapping[str, Path], checkpoints: Path, on_start=None) -> tuple[Path, Path]:
    """A CreateTrainingJob request's ``ResourceConfig.InstanceCount`` simulated hosts, each with the request's
    hyperparameters and channels (``channels``: each one downloaded once); returns algo-1's model and output-data
    folders.

    Every host gets every channel (``FullyReplicated``, hard links; ``ShardedByS3Key``: its share, see
    :func:`sharded_by_s3_key`) and the job's checkpoints (SageMaker syncs
    the checkpoint prefix to each instance); what the hosts leave in theirs is gathered back into
    ``checkpoints``. ``sagemaker_submit_directory`` inside the container (``/opt/ml/...``) points into the
    host's own tree."""
    names = host_names(resources["InstanceCount"])
    ensure_resolvable(names)
    settings = {c["ChannelName"]: {"TrainingInputMode": c.get("InputMode", "File"), "S3DistributionType":
                                   c["DataSource"]["S3DataSource"].get("S3DataDistributionType", "FullyReplicated")}
                for c in input_data_config}
    bases = {}
    for index, host in enumerate(names):
        base = job_dir / "hosts" / host
        shutil.rmtree(base, ignore_errors=True)
        for name, channel in channels.items():
            _place_channel(channel, base / "input" / "data" / name, settings[name]["S3DistributionType"], index,
                           len(names))
        shutil.copytree(checkpoints, base / "checkpoints", dirs_exist_ok=True)
        encoded = dict(hyperparameters)
        submit = json.loads(encoded["sagemaker_submit_directory"])
        if submit.startswith(CONTAINER_ROOT):
            encoded["sagemaker_submit_directory"] = json.dumps(str(base / submit.removeprefix(CONTAINER_ROOT)))
        write_config(base, host=host, hosts=names, instance_type=resources["InstanceType"], hyperparameters=encoded,
                     channels=settings)
        bases[host] = base
    with exclusive():
        processes = {host: launch(base) for host, base in bases.items()}
        if on_start is not None:
            on_start(Cluster(processes))
        try:
            wait_all(processes, bases)
        finally:
            for base in bases.values():
                shutil.copytree(base / "checkpoints", checkpoints, dirs_exist_ok=True)
    return bases[names[0]] / "model", bases[names[0]] / "output" / "data"
