"""The demo's training is pinned: the same weights on every clean run of one software stack, on any x86-64 CPU."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from cxr import jobcode, training_run
from cxr.commands import demo

train = jobcode.load("train")


def demo_args():
    flags = training_run.hyperparameter_flags(demo.DEMO_HYPERPARAMETERS)
    return train.parse_args([*flags, "--train", "unused", "--validation", "unused"])


def test_the_demo_trains_in_fp32_whatever_the_cpu_offers(monkeypatch):
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # a CPU where `auto` means bfloat16
        monkeypatch.setattr(torch.cpu, probe, lambda: True, raising=False)
    assert train.choose_precision("auto", torch.device("cpu")) == torch.bfloat16
    assert train.choose_precision(demo_args().precision, torch.device("cpu")) is None


def test_the_demo_fixes_its_thread_count_seed_and_kernels():
    args = demo_args()
    assert args.threads == 2 and args.seed == 0 and args.deterministic == 1 and args.cpu_kernels == "baseline"
    assert train.parse_args(["--train", "unused", "--validation", "unused"]).cpu_kernels == "native"


def test_deterministic_kernels_are_switched_on_only_when_asked():
    try:
        train.seed_everything(0, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
        train.seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


PIN = """
import sys
from cxr import jobcode
train = jobcode.load("train")
import torch
if sys.argv[1] == "late":
    torch.ones(3).sum()  # a kernel runs first: its instruction set is fixed already
train.pin_cpu_kernels()
print(torch.backends.cpu.get_cpu_capability())
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 kernels only")
def test_baseline_cpu_kernels_are_pinned_before_the_first_operation():
    """Each library reads its variable at its first use, so the pin must come first, and says so when it cannot."""
    env = {k: v for k, v in os.environ.items() if k not in train.PORTABLE_CPU_KERNELS}
    early = subprocess.run([sys.executable, "-c", PIN, "early"], capture_output=True, text=True, env=env, check=True)
    assert early.stdout.strip() == "DEFAULT"
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":  # a CPU whose own kernels are the baseline ones
        return
    late = subprocess.run([sys.executable, "-c", PIN, "late"], capture_output=True, text=True, env=env)
    assert late.returncode != 0 and "a CPU kernel ran before --cpu-kernels baseline could pin them" in late.stderr
