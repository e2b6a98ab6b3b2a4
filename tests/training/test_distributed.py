"""Data-parallel training on the CPU (gloo): the real Trainer under torchrun, and train.py launched by the real
toolkits (sagemaker-training's ``train`` running sagemaker-pytorch-training's module with
``sagemaker_torch_distributed_enabled``) on two processes of one host and on two simulated hosts."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic import TINY_HPS

from cxr.local import hosts
from infra import packaging

pytestmark = pytest.mark.slow

PROBE = Path(__file__).with_name("ddp_probe.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_take_disjoint_halves_and_average_to_one_process_gradients(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # gloo on the CPU, on a machine with a GPU too
    single = subprocess.run([sys.executable, str(PROBE), str(tmp_path)], capture_output=True, text=True, timeout=120,
                            env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    pair = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), str(PROBE), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert pair.returncode == 0, pair.stderr[-2000:]
    one = torch.load(tmp_path / "rank-0-of-1.pt")
    ranks = [torch.load(tmp_path / f"rank-{r}-of-2.pt") for r in (0, 1)]
    halves = [set(r["share"].tolist()) for r in ranks]
    assert not halves[0] & halves[1] and halves[0] | halves[1] == set(one["share"].tolist())
    assert len(halves[0]) == len(halves[1]) == 4
    for rank in ranks:  # DDP's all-reduced gradients on each rank: those of one process on the whole batch
        for name, grad in one["grads"].items():
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-5, atol=1e-6)
    assert sum(r["loss"] for r in ranks) / 2 == pytest.approx(one["loss"], rel=1e-5)


def opt_ml(base: Path, host: str, host_list: list[str], channels: dict[str, Path], code: Path, hps: dict) -> Path:
    """One simulated host's /opt/ml tree: config files, the channels and an empty checkpoint folder."""
    for name, channel in channels.items():
        shutil.copytree(channel, base / "input" / "data" / name)
    encoded = {k: json.dumps(v) for k, v in hps.items()}
    encoded.update(sagemaker_program=json.dumps("train.py"), sagemaker_submit_directory=json.dumps(str(code)),
                   sagemaker_torch_distributed_enabled="true", sagemaker_instance_type=json.dumps("ml.c5.xlarge"))
    hosts.write_config(base, host=host, hosts=host_list, instance_type="ml.c5.xlarge", hyperparameters=encoded,
                       channels={n: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}
                                 for n in channels})
    return base


@pytest.fixture(scope="module")
def code(module_dir) -> Path:
    """train.py and its modules as a directory ``sagemaker_submit_directory`` (the toolkit copies it to code/)."""
    folder = module_dir("code")
    packaging.stage_sources(folder)
    return folder


def launch_and_wait(bases: dict[str, Path], env: dict | None = None) -> None:
    hosts.ensure_resolvable(list(bases))
    with hosts.exclusive():  # another test file's cluster may be running (make test runs files in parallel)
        processes = {host: hosts.launch(base, env) for host, base in bases.items()}
        hosts.wait_all(processes, bases, timeout=600)


def test_two_processes_through_the_toolkit_resume_a_one_process_checkpoint_mid_epoch(trained, staged, code,
                                                                                      tmp_path):
    """torchrun with two ranks on one host, started by the toolkit, resumes what a one-process run left in
    the middle of epoch 1 (16 of 36 samples seen): the remaining 20 give one global batch of 16."""
    base = opt_ml(tmp_path / "algo-1", "algo-1", ["algo-1"], staged.channels, code,
                  {**TINY_HPS, "sagemaker_mpi_num_of_processes_per_host": 2})
    shutil.copy(trained / "checkpoints" / "ckpt-00000006.pt", base / "checkpoints")
    launch_and_wait({"algo-1": base}, {"PET_MASTER_PORT": str(free_port())})
    log = (base / "train.log").read_text()
    assert "torchrun --nnodes 1 --nproc_per_node 2" in log
    resumed = json.loads(next(line for line in log.splitlines() if line.startswith('{"resumed_from"')))
    assert resumed == {"resumed_from": "ckpt-00000006.pt", "global_step": 6, "samples_in_epoch": 16,
                       "world_size": 2}
    config = json.loads((base / "model" / "model.json").read_text())
    assert config["distributed"] == {"world_size": 2, "global_batch": 16, "peak_lr": 2 * TINY_HPS["lr"]}
    metrics = json.loads((base / "model" / "metrics.json").read_text())
    assert metrics["training"]["epochs_run"] == 3
    # 6 one-process steps, 1 two-rank step to end epoch 1, 2 in epoch 2: rank 0 alone wrote checkpoints
    assert max(p.name for p in (base / "checkpoints").glob("ckpt-*.pt")) == "ckpt-00000009.pt"


def test_two_hosts_through_the_toolkit_match_one_process_on_the_same_global_batch(trained, staged, code, tmp_path):
    """algo-1 and algo-2, each its own /opt/ml tree, one rank each: 4 images a rank at half the learning rate
    is the one-process run's global batch of 8 at its rate, on the same sample order; batch-norm statistics,
    augmentation and dropout streams differ per rank, so the metrics agree within a tolerance, not exactly."""
    names = ["algo-1", "algo-2"]
    hps = {**TINY_HPS, "batch-size": TINY_HPS["batch-size"] // 2, "lr": TINY_HPS["lr"] / 2}
    bases = {host: opt_ml(tmp_path / host, host, names, staged.channels, code, hps) for host in names}
    launch_and_wait(bases)
    assert "--master_addr algo-1 --master_port 7777 --node_rank 1" in (bases["algo-2"] / "train.log").read_text()
    assert not any((bases["algo-2"] / "model").iterdir())  # rank 0 (on algo-1) alone writes the artifact
    config = json.loads((bases["algo-1"] / "model" / "model.json").read_text())
    assert config["distributed"] == {"world_size": 2, "global_batch": 8, "peak_lr": TINY_HPS["lr"]}
    two = json.loads((bases["algo-1"] / "model" / "metrics.json").read_text())
    one = json.loads((trained / "model" / "metrics.json").read_text())
    # Stated tolerance (3 epochs of 4 steps on 36 images; a 6-image test split is too small to compare):
    # validation loss within 0.1 and training loss within 0.25 of one process's, every epoch.
    for epoch_two, epoch_one in zip(two["training"]["history"], one["training"]["history"], strict=True):
        assert epoch_two["validation_loss"] == pytest.approx(epoch_one["validation_loss"], abs=0.1)
        assert epoch_two["train_loss"] == pytest.approx(epoch_one["train_loss"], abs=0.25)


def test_a_two_rank_job_stopped_mid_epoch_resumes_on_one_process(staged, code, tmp_path):
    """StopTrainingJob's SIGTERM reaches both ranks (the offline cloud signals the host's process group): they
    agree to stop at the same step, rank 0 checkpoints mid-epoch, and one process finishes from there."""
    import signal
    import time

    from cxr import training_run

    hps = {**TINY_HPS, "batch-size": 2, "epochs": 4, "log-steps": 1, "checkpoint-steps": 1000}  # 9 steps an epoch
    base = opt_ml(tmp_path / "algo-1", "algo-1", ["algo-1"], staged.channels, code,
                  {**hps, "sagemaker_mpi_num_of_processes_per_host": 2})
    hosts.ensure_resolvable(["algo-1"])
    log = base / "train.log"
    # The toolkit's rendezvous is algo-1:7777 whatever PET_MASTER_PORT says: another file's cluster must not run
    # beside this one (without the lock both failed in CI, this one with no checkpoint).
    with hosts.exclusive():
        cluster = hosts.Cluster({"algo-1": hosts.launch(base, {"PET_MASTER_PORT": str(free_port())})})
        deadline = time.monotonic() + 300
        while ('"epoch": 0, "step": 1,' not in log.read_text() and cluster.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.2)
        assert cluster.poll() is None, f"the job ended before the stop:\n{log.read_text()[-3000:]}"
        cluster.send_signal(signal.SIGTERM)
        cluster.processes["algo-1"].wait(timeout=120)
        hosts.wait_for_group(cluster.processes["algo-1"].pid)  # the ranks outlive the toolkit's entry
    saved = max((base / "checkpoints").glob("ckpt-*.pt"))  # the stop's (an epoch's end may precede it under load)
    state = torch.load(saved, weights_only=False)["state"]
    # inside an epoch: after 1 to 9 of its global batches of 4 (9: before the epoch's validation), by load
    # (0: under load the stop can land on an epoch's boundary; the toolkit test above resumes mid-epoch for sure)
    assert state["world_size"] == 2 and 0 <= state["samples_in_epoch"] <= 36 and state["samples_in_epoch"] % 4 == 0
    assert not (base / "model" / "model.json").exists()

    model_dir = training_run.run_training_job(staged.channels, hps, tmp_path / "one",
                                              checkpoint_dir=base / "checkpoints")
    resumed = next(json.loads(line) for line in (tmp_path / "one" / "train.log").read_text().splitlines()
                   if line.startswith('{"resumed_from"'))
    assert resumed == {"resumed_from": saved.name, "global_step": state["global_step"],
                       "samples_in_epoch": state["samples_in_epoch"], "world_size": 1}
    assert json.loads((model_dir / "model.json").read_text())["distributed"]["world_size"] == 1


def test_one_simulated_cluster_at_a_time(tmp_path):
    """Every simulated cluster is algo-1:7777: a second waits for the first (parallel test files)."""
    lock = tmp_path / "hosts.lock"
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a')\n"
             "try: fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError: sys.exit(3)")
    with hosts.exclusive(lock):
        assert subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode == 3
    assert subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode == 0


def test_two_ranks_on_their_own_shards_checkpoint_what_they_took_and_one_process_finishes_the_epoch(
        staged, code, tmp_path):
    """A shard channel on one host with two processes: the ranks deal its 9 shards (5 and 4) and walk their own
    images, 4 steps an epoch at 4 a rank. The checkpoint 2 steps into epoch 1 records each rank's shards and the
    16 images taken; one process resumes it, skips those 16 and finishes the run."""
    from sharded import pack_channels

    from cxr import training_run

    channels = pack_channels(staged.channels, tmp_path / "packed", 4)
    hps = {**TINY_HPS, "batch-size": 4}
    base = opt_ml(tmp_path / "algo-1", "algo-1", ["algo-1"], channels, code,
                  {**hps, "sagemaker_mpi_num_of_processes_per_host": 2})
    launch_and_wait({"algo-1": base}, {"PET_MASTER_PORT": str(free_port())})
    saved = base / "checkpoints" / "ckpt-00000006.pt"
    state = torch.load(saved, weights_only=False)["state"]
    walk = state["shard_walk"]
    assert state["epoch"] == 1 and [r["position"] for r in walk["ranks"]] == [8, 8] and len(walk["taken"]) == 16
    shares = [set(r["shards"]) for r in walk["ranks"]]
    assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == 9
    assert json.loads((base / "model" / "model.json").read_text())["distributed"]["world_size"] == 2

    alone = tmp_path / "alone-checkpoints"
    alone.mkdir()
    shutil.copy(saved, alone)
    model_dir = training_run.run_training_job(channels, hps, tmp_path / "one", checkpoint_dir=alone)
    log = (tmp_path / "one" / "train.log").read_text().splitlines()
    resumed = next(json.loads(line) for line in log if line.startswith('{"shard_walk"'))
    assert resumed == {"shard_walk": "other ranks: images already taken this epoch skipped", "position": 0,
                       "skipped": 16}
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["training"]["epochs_run"] == 3
    # epoch 1 ends after the 20 images left (5 steps of 4): its end checkpoint is step 6 + 5
    assert (alone / "ckpt-00000011.pt").exists()
