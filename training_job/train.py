"""SageMaker script-mode training job: channels in, a deployable model directory out.

Contract (the same on SageMaker and under ``cxr train-local``):

* inputs: ``SM_CHANNEL_TRAIN``, ``SM_CHANNEL_VALIDATION``, optional ``SM_CHANNEL_TEST`` (each holds a
  ``*.jsonl`` manifest and the PNGs at ``<channel>/<key>``, or PrepareDataset's ``NNNNNN.tar`` shards:
  ``data.py``), optional ``SM_CHANNEL_PRETRAINED``
  (a ``*.pth`` state dict in efficientnet_pytorch's layout);
* hyperparameters: command-line flags (``--epochs 8``; see ``python train.py --help``; dashes
  or underscores both work);
* outputs: ``SM_MODEL_DIR`` (weights, ONNX, ``model.json``, ``metrics.json``, ``report/``,
  ``code/``), ``SM_OUTPUT_DATA_DIR`` (``metrics.json`` and the report again, for ``output.tar.gz``);
* checkpoints: ``SM_CHECKPOINT_DIR`` (default ``/opt/ml/checkpoints``, which SageMaker syncs to S3);
  a restarted job (spot interruption) resumes from the newest one and ends with the same weights
  as an uninterrupted run. SIGTERM (how SageMaker stops a job) saves a checkpoint first.

Under ``torchrun`` (SageMaker's ``torch_distributed`` launch) it trains data-parallel: see ``distributed.py``;
a training channel of shards is walked rank by rank over each rank's own shards: see ``shard_epochs.py``.

Seeds are fixed; on a GPU the step runs under automatic mixed precision, on a CPU under bf16
autocast with channels-last tensors when the CPU has bf16 instructions.
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import math
import os
import platform
import random
import shutil
import signal
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import artifact
import augment
import benchmark
import data
import decision
import distributed
import imaging
import inference
import metrics as m
import mixing
import networks
import numpy as np
import ood
import quantize
import report
import shard_epochs
import torch
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

CHECKPOINT_PATTERN = "ckpt-*.pt"
RANK_SEED_STRIDE = 7919
"""Rank r > 0 seeds its augmentation and dropout streams ``seed + r * stride``; rank 0 keeps one process's."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])

    def add(name: str, **kwargs):
        aliases = dict.fromkeys([f"--{name}", f"--{name.replace('-', '_')}"])  # SageMaker passes keys verbatim
        p.add_argument(*aliases, **kwargs)

    # Defaults: the recipe measured best within the CPU budget on Kermany (bench/RESULTS.md), so the
    # pipeline deploys what the benchmarks measured; `cxr train-local` uses them for X-rays too.
    add("architecture", default="efficientnet_lite2", choices=networks.ARCHITECTURES)
    add("image-size", type=int, default=160, help="model input side in pixels")
    add("resize-policy", default="squash", choices=imaging.RESIZE_POLICIES)
    add("intensity", default="equalize", choices=imaging.INTENSITY_POLICIES,
        help="histogram-equalised per image (undoes a machine's contrast curve), or grey levels as stored; "
             "recorded in model.json")
    add("width", type=int, default=32, help="base channel width of compact/resnet")
    add("dropout", type=float, default=0.2)
    add("ensemble", type=int, default=1,
        help="networks trained one after another, member k with seed + k; the model's logits are their mean "
             "(networks.Ensemble); recorded in model.json")
    add("epochs", type=int, default=5)
    add("probe-epochs", type=int, default=0,
        help="the first N epochs train the classifier alone on the frozen pretrained body (its batch-norm statistics "
             "too), then everything (LP-FT: Kumar et al. 2022, arXiv:2202.10054); 0: everything from the start")
    add("batch-size", type=int, default=32)
    add("lr", type=float, default=1e-3, help="peak learning rate (AdamW, warm-up then cosine decay)")
    add("weight-decay", type=float, default=1e-4)
    add("warmup-epochs", type=float, default=0.5)
    add("label-smoothing", type=float, default=0.1)
    add("ema-decay", type=float, default=0.99,
        help="validate and ship a bias-corrected exponential moving average of the weights (0: the raw weights)")
    add("class-weighting", default="balanced", choices=("balanced", "none"))
    add("augment", default="strong", choices=augment.STRENGTHS)
    add("mixup", type=float, default=0.0, help="mixup's Beta(alpha, alpha) for blending image pairs (0: none)")
    add("referral-margin", type=float, default=decision.DEFAULT_MARGIN,
        help="refer to a radiologist while p(pneumonia) is within this many log-odds of the threshold "
             "(decision.py; log 4: [0.2, 0.8] at threshold 0.5); recorded in model.json")
    add("int8-max-drop", type=float, default=quantize.MAX_ACCURACY_DROP,
        help="the INT8 model serves when its validation accuracy is at most this far below FP32's (1: always)")
    add("threshold-rule", default="youden", choices=("youden", "sensitivity"),
        help="binary threshold on validation: Youden's J (kept only when it beats argmax), or the highest "
             "threshold with sensitivity >= --min-sensitivity (the most specificity at that sensitivity)")
    add("min-sensitivity", type=float, default=0.95)
    add("threshold", type=float, default=None,
        help="a fixed binary threshold instead of the rule (e.g. the worst-proxy one of bench/proxies.py)")
    add("patience", type=int, default=3, help="epochs without validation improvement before stopping")
    add("seed", type=int, default=0)
    add("precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    add("threads", type=int, default=0, help="CPU threads (0: all cores)")
    add("deterministic", type=int, default=0, choices=(0, 1),
        help="1: refuse nondeterministic torch kernels (with --threads and --precision fp32, the same weights on "
             "every run of one machine and software stack; the demo sets all three)")
    add("cpu-kernels", default="native", choices=("native", "baseline"),
        help="baseline: hold torch's CPU kernels to the baseline x86-64 instruction set (PORTABLE_CPU_KERNELS), so "
             "that a deterministic run trains the same weights on any x86-64 CPU, at some speed (the demo's)")
    add("checkpoint-steps", type=int, default=200, help="also checkpoint every N optimizer steps")
    add("keep-checkpoints", type=int, default=2)
    add("log-steps", type=int, default=20, help="print the loss and speed every N steps")
    add("model-dir", default=env.get("SM_MODEL_DIR", "/opt/ml/model"))
    add("output-data-dir", default=env.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
    add("checkpoint-dir", default=env.get("SM_CHECKPOINT_DIR", "/opt/ml/checkpoints"))
    add("train", default=env.get("SM_CHANNEL_TRAIN"))
    add("validation", default=env.get("SM_CHANNEL_VALIDATION"))
    add("test", default=env.get("SM_CHANNEL_TEST"))
    add("benchmark", default=env.get("SM_CHANNEL_BENCHMARK"))
    add("pretrained", default=env.get("SM_CHANNEL_PRETRAINED"))
    args = p.parse_args(argv)
    if not args.train or not args.validation:
        p.error("the train and validation channels are required (SM_CHANNEL_TRAIN, SM_CHANNEL_VALIDATION)")
    if args.ensemble < 1:
        p.error(f"--ensemble must be at least 1 (one network), got {args.ensemble}")
    if not 0 <= args.probe_epochs < args.epochs:
        p.error(f"--probe-epochs must leave epochs to train everything: 0 <= {args.probe_epochs} < {args.epochs}")
    if args.threshold is not None and not 0 < args.threshold < 1:
        p.error(f"--threshold must lie inside (0, 1), got {args.threshold}")
    if not (math.isfinite(args.referral_margin) and args.referral_margin > 0):
        p.error(f"--referral-margin must be a positive number of log-odds, got {args.referral_margin}")
    return args


def hyperparameters(args: argparse.Namespace) -> dict:
    """The training settings in effect (defaults included), without the environment's paths."""
    return {k: v for k, v in vars(args).items()
            if k not in ("model_dir", "output_data_dir", "checkpoint_dir", "train", "validation", "test", "benchmark",
                         "pretrained")}


PORTABLE_CPU_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}
"""What ``--cpu-kernels baseline`` holds the CPU kernels to: ATen's baseline x86-64 kernels, oneDNN's SSE4.1 ones
and MKL's conditional-numerical-reproducibility path. Otherwise each CPU runs the widest kernels its instruction
set allows (AVX-512 on one machine, AVX2 on another), whose sums round differently, and over the demo's 4 epochs
that trained different models: 11, 9 and 7 of the 16 X-rays right (15, 14 and 12 on normal vs pneumonia) on two
machines and with one of them held to AVX2 (README, demo). It costs the demo about 15 s; the offline registry
test's small trainings took several times longer with it, so that test, which needs one machine's determinism
only, keeps its CPU's own kernels."""


def pin_cpu_kernels() -> None:
    """Hold the CPU kernels to :data:`PORTABLE_CPU_KERNELS`, so that the same weights come out on any x86-64 CPU
    (elsewhere nothing is held). Each library reads its variable when first used, so this must come before the
    first tensor operation."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return
    os.environ.update(PORTABLE_CPU_KERNELS)
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        raise RuntimeError("a CPU kernel ran before --cpu-kernels baseline could pin them: set "
                           + " ".join(f"{k}={v}" for k, v in PORTABLE_CPU_KERNELS.items()) + " before starting")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs to be deterministic
        torch.use_deterministic_algorithms(True)


def choose_precision(requested: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if requested == "fp32":
        return None
    if requested == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        native = any(getattr(torch.cpu, probe, lambda: False)()
                     for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return torch.bfloat16 if native else None  # emulated bf16 is slower than fp32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[requested]


def learning_rate(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def bias_corrected_ema(decay: float) -> Callable:
    """An exponential moving average whose weights over the steps seen so far sum to one (as Adam's moments).

    A plain EMA that starts as a copy of the first weights keeps ``decay ** n`` of them after n
    steps: 79 % after the demo's 24 steps at 0.99, so it would ship the untrained head.
    Corrected, step n enters with ``(1 - decay) / (1 - decay ** n)``: a short run gets the average
    of its steps, a long one (hundreds of steps) the plain EMA to within ``decay ** n``.
    """
    def update(averaged, current, n_averaged) -> None:
        seen = int(n_averaged) + 1  # AveragedModel copies step 1 itself and counts it in n_averaged
        get_ema_multi_avg_fn(1 - (1 - decay) / (1 - decay ** seen))(averaged, current, n_averaged)

    return update


class Trainer:
    """The training loop with its exact-resume state, on one process or as one rank of many (``distributed``).

    A global batch is ``batch-size`` images per rank; the peak learning rate is ``lr`` times the number of
    ranks (the linear scaling rule, with the warm-up it relies on: Goyal et al. 2017, arXiv:1706.02677).
    Progress is counted in samples of the epoch's permutation, so a checkpoint resumes on any number of ranks
    at the very sample where it stopped; on the same number it resumes exactly (every rank's random streams).
    """

    def __init__(self, args, model, splits, classes, device, dtype, world: distributed.World | None = None):
        self.args, self.model, self.splits, self.classes = args, model, splits, classes
        self.device, self.dtype, self.world = device, dtype, world or distributed.World()
        self.channels_last = device.type == "cpu" and dtype is not None
        self.model.to(device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ddp = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                    if world.size > 1 else model)
        # with probe epochs, the classifier's weights in groups of their own, so that the body can be held still;
        # without, the two groups as ever (and the optimizer state of earlier checkpoints still fits)
        head = {id(p) for p in model.classifier.parameters()} if args.probe_epochs else set()
        groups = []
        for in_head in (False, True):
            named = [p for p in model.parameters() if (id(p) in head) == in_head]
            groups += [{"params": [p for p in named if p.ndim > 1], "weight_decay": args.weight_decay, "head": in_head},
                       {"params": [p for p in named if p.ndim <= 1], "weight_decay": 0.0, "head": in_head}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=args.lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        # a rank holding its own shards walks its own images (shard_epochs); the counts are then the ranks' sum
        self.walk = (shard_epochs.ShardWalk(splits["train"], self.world, args.seed, args.batch_size)
                     if splits["train"].parts else None)
        self.class_counts = torch.bincount(splits["train"].targets, minlength=len(classes))
        if self.walk:
            self.class_counts = distributed.reduce_sum(self.class_counts, self.world)
        counts = self.class_counts.float()
        weights = counts.sum() / (len(classes) * counts.clamp(min=1))
        self.class_weights = (weights if args.class_weighting == "balanced" else torch.ones_like(weights)).to(device)
        self.global_batch = args.batch_size * world.size
        self.peak_lr = args.lr * world.size
        self.steps_per_epoch = max(1, int(counts.sum()) // self.global_batch)
        self.total_steps = self.steps_per_epoch * args.epochs
        self.warmup_steps = int(args.warmup_epochs * self.steps_per_epoch)
        self.augment_rng = torch.Generator().manual_seed(args.seed + 1 + RANK_SEED_STRIDE * world.rank)
        if world.rank:
            torch.manual_seed(args.seed + RANK_SEED_STRIDE * world.rank)
        # The average smooths out the last steps' noise; batch-norm statistics are averaged with it.
        self.ema = (AveragedModel(model, multi_avg_fn=bias_corrected_ema(args.ema_decay), use_buffers=True)
                    if args.ema_decay > 0 else None)
        self.state = {"epoch": 0, "samples_in_epoch": 0, "steps_in_epoch": 0, "global_step": 0,
                      "world_size": world.size,
                      "best_loss": float("inf"),
                      "best_epoch": -1, "bad_epochs": 0, "history": [], "stopped_early": False}
        self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.stop_requested = False
        self.train_records = splits["train"].records  # the whole split's: main gathers them when ranks hold shards

    # -- checkpoints ---------------------------------------------------------------------
    def checkpoint_dir(self) -> Path:
        return Path(self.args.checkpoint_dir)

    def random_streams(self) -> dict:
        return {"augment_rng": self.augment_rng.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy_rng": np.random.get_state(), "python_rng": random.getstate()}

    def restore_streams(self, streams: dict) -> None:
        self.augment_rng.set_state(streams["augment_rng"])
        torch.set_rng_state(streams["torch_rng"])
        if streams["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(streams["cuda_rng"])
        np.random.set_state(streams["numpy_rng"])
        random.setstate(streams["python_rng"])

    def save_checkpoint(self) -> Path | None:
        """Every rank calls it (their random streams are gathered); rank 0 alone writes."""
        self.state["world_size"] = self.world.size
        if self.walk:
            self.state["shard_walk"] = self.walk.state() if self.walk.position or self.walk.skip else None
        streams = distributed.gather(self.random_streams(), self.world)
        if not self.world.is_main:
            return None
        directory = self.checkpoint_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"ckpt-{self.state['global_step']:08d}.pt"
        payload = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "best_weights": self.best_weights, "state": self.state,
            "ema": self.ema.state_dict() if self.ema else None, "streams": streams,
            "config": {k: getattr(self.args, k) for k in ("architecture", "ensemble", "image_size", "epochs",
                                                           "batch_size", "seed", "lr", "ema_decay", "intensity",
                                                           "probe_epochs")},
        }
        partial = path.with_suffix(".partial")
        torch.save(payload, partial)
        partial.replace(path)  # atomic: an interruption never leaves a half-written checkpoint
        for old in sorted(directory.glob(CHECKPOINT_PATTERN))[: -self.args.keep_checkpoints]:
            old.unlink()
        return path

    def resume(self) -> Path | None:
        found = sorted(self.checkpoint_dir().glob(CHECKPOINT_PATTERN)) if self.checkpoint_dir().exists() else []
        if not found:
            return None
        payload = torch.load(found[-1], map_location=self.device, weights_only=False)
        mine = {k: getattr(self.args, k) for k in payload["config"]}
        if payload["config"] != mine:
            raise SystemExit(f"checkpoint {found[-1]} was made with {payload['config']}, not {mine}: "
                             "use a fresh checkpoint directory for different hyperparameters")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scaler.load_state_dict(payload["scaler"])
        if self.ema:
            self.ema.load_state_dict(payload["ema"])
        self.best_weights, self.state = payload["best_weights"], payload["state"]
        self.state.setdefault("steps_in_epoch", 0)
        if self.walk:  # a checkpoint of a replicated channel has no shard walk: its epoch restarts
            exact = self.walk.restore(self.state.get("shard_walk"))
            self.say({"shard_walk": "exact" if exact else "other ranks: images already taken this epoch skipped",
                      "position": self.walk.position, "skipped": len(self.walk.skip)})
        streams = payload["streams"]
        if self.world.rank < len(streams):
            self.restore_streams(streams[self.world.rank])
        else:  # more ranks than the checkpoint's run had: fresh streams, distinct per rank and step
            self.augment_rng.manual_seed(self.args.seed + 1 + RANK_SEED_STRIDE * self.world.rank
                                         + self.state["global_step"])
            torch.manual_seed(self.args.seed + RANK_SEED_STRIDE * self.world.rank + self.state["global_step"])
        return found[-1]

    # -- loop ------------------------------------------------------------------------------
    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def train_step(self, global_index: torch.Tensor) -> float:
        """One optimizer step on a global batch of training-split indices: this rank computes the loss of its
        share, DDP averages the gradients into those of the global batch's weighted mean loss."""
        train = self.splits["train"]
        global_index = global_index[: len(global_index) // self.world.size * self.world.size]
        index = distributed.share(global_index, self.world)
        scale = distributed.loss_scale(self.class_weights[train.targets[global_index].to(self.device)], self.world)
        return self._step(index, scale, self.state["samples_in_epoch"] // self.global_batch)

    def shard_step(self, index: torch.Tensor, step_in_epoch: int) -> float:
        """One optimizer step on this rank's own batch (``index`` into its shards' images): the global batch's
        weight is the ranks' sum, so DDP's average is again the gradient of the global weighted mean."""
        weights = self.class_weights[self.splits["train"].targets[index].to(self.device)]
        total = distributed.reduce_sum(weights.sum().detach(), self.world)
        return self._step(index, self.world.size / float(total), step_in_epoch)

    def _step(self, index: torch.Tensor, scale: float, step_in_epoch: int) -> float:
        train = self.splits["train"]
        position = self.state["epoch"] * self.steps_per_epoch + step_in_epoch
        lr = learning_rate(position, self.total_steps, self.warmup_steps, self.peak_lr)
        probing = self.state["epoch"] < self.args.probe_epochs
        for group in self.optimizer.param_groups:
            group["lr"] = lr if group["head"] or not probing else 0.0
        batch = train.pixels[index]
        if self.device.type == "cuda":  # augment where the network runs: the CPU cannot keep a GPU busy
            batch = batch.to(self.device, non_blocking=True)
        images = augment.augment(data.to_inputs(batch), self.augment_rng, self.args.augment)
        images, partner, kept = mixing.mixup(images, self.augment_rng, self.args.mixup)
        self.ddp.train()
        if probing:  # a linear probe: the body's batch-norm statistics stay the pretrained ones as well
            self.model.body.eval()
        with self.autocast():
            logits = self.ddp(self.to_device(images))
        per_sample = mixing.loss(lambda targets: F.cross_entropy(
            logits.float(), targets, weight=self.class_weights, label_smoothing=self.args.label_smoothing,
            reduction="none"), train.targets[index].to(self.device), partner, kept)
        loss = per_sample.sum() * scale
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema:
            self.ema.update_parameters(self.model)
        return float(loss.detach())

    @torch.no_grad()
    def logits(self, split: data.Split, model=None) -> np.ndarray:
        model = model or self.model
        model.eval()
        out = []
        for start in range(0, len(split), 64):
            with self.autocast():
                out.append(model(self.to_device(split.inputs[start: start + 64])).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes)))

    @property
    def evaluated_model(self) -> torch.nn.Module:
        """What validation judges and the artifact ships: the weight average when there is one."""
        return self.ema.module if self.ema else self.model

    def validation_loss(self) -> float:
        val = self.splits["validation"]
        logits = torch.from_numpy(self.logits(val, self.evaluated_model))
        return float(F.cross_entropy(logits, val.targets))

    def say(self, message) -> None:
        if self.world.is_main:
            say(message)

    def run(self) -> None:
        log = self.state["history"]
        while self.state["epoch"] < self.args.epochs and not self.state["stopped_early"]:
            epoch = self.state["epoch"]
            started, losses, first = time.perf_counter(), [], self.state["global_step"]
            for loss, step, more in (self.shard_steps(epoch) if self.walk else self.replicated_steps(epoch)):
                losses.append(loss)
                if step % self.args.log_steps == 0:
                    rate = (time.perf_counter() - started) / (self.state["global_step"] - first)
                    self.say({"epoch": epoch, "step": step, "of": self.steps_per_epoch,
                              "loss": round(float(np.mean(losses[-self.args.log_steps:])), 4),
                              "s_per_step": round(rate, 3)})
                if distributed.any_rank(self.stop_requested, self.world):
                    self.save_checkpoint()
                    self.say("stop requested: checkpoint saved, exiting")
                    sys.exit(143)
                if self.state["global_step"] % self.args.checkpoint_steps == 0 and more:
                    self.save_checkpoint()
            # rank 0 judges (its weights; batch-norm statistics differ per rank) and every rank follows
            val_loss = distributed.from_main(self.validation_loss() if self.world.is_main else math.nan, self.world)
            improved = val_loss < self.state["best_loss"] - 1e-4
            if improved:
                self.state.update(best_loss=val_loss, best_epoch=epoch, bad_epochs=0)
                self.best_weights = {k: v.detach().clone() for k, v in self.evaluated_model.state_dict().items()}
            else:
                self.state["bad_epochs"] += 1
                self.state["stopped_early"] = self.state["bad_epochs"] >= self.args.patience
            entry = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None,
                     "validation_loss": val_loss, "seconds": round(time.perf_counter() - started, 1)}
            log.append(entry)
            self.say(entry)
            self.state.update(epoch=epoch + 1, samples_in_epoch=0, steps_in_epoch=0)
            self.save_checkpoint()
        self.model.load_state_dict(self.best_weights)

    def replicated_steps(self, epoch: int) -> Iterator[tuple[float, int, bool]]:
        """The epoch's steps on a split every rank holds whole: one seeded permutation, global batches from where
        the epoch stands (the first one even when the split is smaller). Yields (loss, step, more to come)."""
        train = self.splits["train"]
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.args.seed * 1000 + epoch))
        while (position := self.state["samples_in_epoch"]) == 0 or position + self.global_batch <= len(train):
            global_index = order[position: position + self.global_batch]
            loss = self.train_step(global_index)
            self.state["global_step"] += 1
            self.state["samples_in_epoch"] = position + len(global_index)
            yield (loss, self.state["samples_in_epoch"] // self.global_batch,
                   self.state["samples_in_epoch"] + self.global_batch <= len(train))

    def shard_steps(self, epoch: int) -> Iterator[tuple[float, int, bool]]:
        """The epoch's steps when each rank walks its own shards' images (:mod:`shard_epochs`)."""
        self.walk.start(epoch)
        while (left := self.walk.steps_left()) > 0:
            loss = self.shard_step(self.walk.next_batch(), self.state["steps_in_epoch"])
            self.state["global_step"] += 1
            self.state["steps_in_epoch"] += 1
            yield loss, self.state["steps_in_epoch"], left > 1
        self.walk.end_epoch()


def say(message) -> None:
    """One log line; a log whose reader is gone must not stop the job. The toolkit's entry pipes the ranks' output
    through itself, and a stop's SIGTERM can end it first: the next line then raised BrokenPipeError in rank 0,
    before the stop's checkpoint (seen in the two-rank stop test). Later lines go to /dev/null."""
    try:
        print(message if isinstance(message, str) else json.dumps(message), flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@torch.no_grad()
def guard_features(model: networks.Classifier, images: data.Inputs, to_device=lambda x: x) -> np.ndarray:
    """The stage statistics (the ONNX ``features`` output) of a split's inputs, 64 at a time."""
    model.eval()
    out = [model.features_and_statistics(to_device(images[start: start + 64]))[1].float().cpu().numpy()
           for start in range(0, len(images), 64)]
    return np.concatenate(out)


def fit_guard(model: networks.Classifier, splits: dict[str, data.Split], model_dir: Path,
              to_device=lambda x: x, served_onnx: Path | None = None) -> ood.Guard:
    """Fit the out-of-distribution guard on the chosen model's training-split features (threshold on the
    validation split) and write ``ood.npz`` into ``model_dir``. With ``served_onnx`` (the INT8 file, when it
    serves) the features are that graph's, which the endpoint scores: quantization moves them (on the demo
    model, INT8 scored the training X-rays 40 % further from their class means than FP32 at the median)."""
    def features(split: data.Split) -> np.ndarray:
        if served_onnx is None:
            return guard_features(model, split.inputs, to_device)
        return quantize.logits(served_onnx, split.inputs, threads=torch.get_num_threads(), output="features")

    train, validation = features(splits["train"]), features(splits["validation"])
    guard = ood.fit(train, splits["train"].targets.numpy(), validation)
    guard.save(model_dir / ood.FILE)
    return guard


def load_channels(args, classes_hint: list[str] | None = None, evaluating: bool = True,
                  world: distributed.World | None = None) -> tuple[dict[str, data.Split], list[str]]:
    """The splits' images; ``evaluating=False`` (ranks other than 0) loads the training split's only. A training
    channel of shards gives each rank of ``world`` its own shards (:func:`shard_epochs.own_shards`); the classes
    are then those of every rank's records."""
    world = world or distributed.World()
    channel_dirs = {"train": args.train, "validation": args.validation}
    if args.test and Path(args.test).exists():
        channel_dirs["test"] = args.test
    own = data.shard_files(Path(args.train))
    if own and world.size > 1:
        own = shard_epochs.own_shards(own, world)
    records = {name: data.shard_records(own) if name == "train" and own else data.read_records(Path(d))
               for name, d in channel_dirs.items() if evaluating or name != "test"}
    labels = set(data.classes_of(records["train"] + records["validation"]))
    classes = classes_hint or sorted(set().union(*distributed.gather(labels, world)))
    threads = max(1, torch.get_num_threads())
    splits = {name: data.load_split(Path(d), classes, args.image_size, args.resize_policy, threads,
                                    intensity=args.intensity, only=own if name == "train" and own else None)
              for name, d in channel_dirs.items() if evaluating or name == "train"}
    return splits, classes


def _read_member(path: Path, member: str) -> bytes:
    with zipfile.ZipFile(path) as bundle:
        return bundle.read(member)


def pretrained_state(directory: str | None, architecture: str) -> tuple[dict | None, str | None]:
    """The channel's weights for this network: ``*.pth`` files and members of ``*.zip`` bundles (the
    pipeline ships one zip with every Lite network's weights); the one named after the network
    (``efficientnet-lite2-*``) wins, else the first."""
    if not directory or not Path(directory).exists():
        return None, None
    found: dict[str, Callable[[], bytes]] = {}
    for path in sorted(Path(directory).rglob("*")):
        if path.suffix in (".pth", ".pt"):
            found.setdefault(path.name, path.read_bytes)
        elif path.suffix == ".zip":
            with zipfile.ZipFile(path) as bundle:
                for member in bundle.namelist():
                    if member.endswith((".pth", ".pt")):
                        found.setdefault(Path(member).name, functools.partial(_read_member, path, member))
    if not found:
        return None, None
    named = [name for name in found if name.startswith(architecture.replace("_", "-") + "-")]
    chosen = (named or list(found))[0]
    return torch.load(io.BytesIO(found[chosen]()), map_location="cpu", weights_only=True), chosen


def choose_threshold(args, val_probs: np.ndarray, val_y: np.ndarray, classes: list[str]) -> tuple[float | None, str]:
    """The binary threshold model.json records, and how it was chosen."""
    if args.threshold is not None:
        return args.threshold, "fixed by the --threshold hyperparameter"
    if args.threshold_rule == "sensitivity":
        return (m.choose_operating_point(val_probs, val_y, classes, args.min_sensitivity),
                f"the highest with sensitivity >= {args.min_sensitivity} on validation")
    return m.choose_threshold(val_probs, val_y, classes), "Youden's J on validation"


def training_record(trainers: list[Trainer]) -> dict:
    """metrics.json's account of training: an ensemble's lists each member's, and tags its history by member."""
    each = [{"best_epoch": t.state["best_epoch"], "epochs_run": len(t.state["history"]),
             "stopped_early": t.state["stopped_early"], "history": t.state["history"]} for t in trainers]
    if len(each) == 1:
        return each[0]
    return {"epochs_run": sum(e["epochs_run"] for e in each),
            "history": [{"member": k, **entry} for k, e in enumerate(each) for entry in e["history"]],
            "members": [{key: value for key, value in e.items() if key != "history"} for e in each]}


def evaluate_and_write(args, trainers: list[Trainer], splits, classes, source_dir: Path, extra: dict) -> dict:
    """Calibrate, choose the threshold, export, quantize and score the trained network (or the mean of an
    ensemble's), and write the artifact's files."""
    trainer = trainers[0]  # every member shares the data, class counts and device
    network = trainer.model if len(trainers) == 1 else networks.Ensemble([t.model for t in trainers])
    model = network.float().to(memory_format=torch.contiguous_format)
    trainer.dtype, trainer.channels_last = None, False  # final figures in fp32, as ONNX serves them
    val_logits = trainer.logits(splits["validation"], model)
    val_y = splits["validation"].targets.numpy()
    # Only a class-weighted loss scores the sub-types as equally common; an unweighted one has the mix in already.
    prior = (decision.subtype_prior(dict(zip(classes, trainer.class_counts.tolist(), strict=True)))
             if args.class_weighting == "balanced" else None)
    temperature = m.fit_temperature(val_logits, val_y, classes, prior)
    val_probs = decision.probabilities(val_logits, classes, temperature, prior)
    threshold, threshold_rule = choose_threshold(args, val_probs, val_y, classes)
    if threshold is not None and not 0 < threshold < 1:  # a saturated score: no log-odds band around it
        threshold, threshold_rule = None, f"{threshold_rule} gave {threshold}, at the edge: none kept"
    rule = decision.Rule.for_classes(classes, threshold, args.referral_margin)

    model_dir = Path(args.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), model_dir / "model.pt")
    artifact.export_onnx(model, args.image_size, model_dir / artifact.ONNX_FILE)
    evaluated_on = "test" if "test" in splits and len(splits["test"]) else "validation"
    sample = splits[evaluated_on].inputs[:8]
    onnx_diff = artifact.check_onnx(model, model_dir / artifact.ONNX_FILE, sample)
    int8 = quantize.choose(
        model_dir, artifact.ONNX_FILE, calibration_images(splits["train"], args.seed),
        splits["validation"].inputs[:].numpy(), lambda logits: m.classification_metrics(
            val_y, decision.probabilities(logits, classes, temperature, prior), classes, rule)["accuracy"],
        max_drop=args.int8_max_drop)
    served = quantize.INT8_FILE if int8["served"] else artifact.ONNX_FILE
    guard = fit_guard(model, splits, model_dir, trainer.to_device, model_dir / served if int8["served"] else None)

    def served_logits(split: data.Split) -> np.ndarray:
        """The logits of the file the endpoint serves: every figure below is the served model's own."""
        if not int8["served"]:
            return trainer.logits(split, model)
        return quantize.logits(model_dir / served, split.inputs, threads=torch.get_num_threads())

    val_served = served_logits(splits["validation"]) if int8["served"] else val_logits
    validation = m.classification_metrics(val_y, decision.probabilities(val_served, classes, temperature, prior),
                                          classes, rule)
    eval_logits = served_logits(splits[evaluated_on]) if evaluated_on == "test" else val_served
    eval_y = splits[evaluated_on].targets.numpy()
    probs_before = decision.probabilities(eval_logits, classes, 1.0, prior)
    probs = decision.probabilities(eval_logits, classes, temperature, prior)
    result = m.classification_metrics(eval_y, probs, classes, rule)
    reliability_before, reliability_after = m.reliability(probs_before, eval_y), m.reliability(probs, eval_y)
    result.update(
        evaluated_on=evaluated_on,
        served_file=served,
        calibration={"temperature": temperature, "ece_before": m.expected_calibration_error(probs_before, eval_y),
                     "ece_after": m.expected_calibration_error(probs, eval_y),
                     "reliability_before": reliability_before, "reliability_after": reliability_after},
        validation=validation,
        training=training_record(trainers),
    )
    result["int8"] = int8
    fingerprint = data.fingerprint({"train": trainer.train_records, "validation": splits["validation"].records})
    config = {
        "model_id": f"cxr-{args.architecture}-{fingerprint[:12]}-{extra['finished'][:19].replace(':', '')}",
        "classes": classes,
        "architecture": args.architecture,
        "width": args.width,
        "ensemble": args.ensemble,
        "image_size": args.image_size,
        "resize_policy": args.resize_policy,
        "intensity": args.intensity,
        "input": {"shape": [1, 1, args.image_size, args.image_size], "dtype": "float32", "range": [0.0, 1.0],
                  "channels": "grayscale"},
        "normalisation": "stored PNG (imaging.normalise) -> imaging.to_model_input(size, resize_policy, intensity) "
                         "/ 255; per-image standardisation inside the network",
        "temperature": temperature,
        "subtype_prior": prior,
        "subtype_prior_rule": "p(pneumonia) kept, its split between sub-types re-weighted by their training mix "
                              "(decision.py); null: none",
        "threshold": threshold,
        "threshold_rule": f"p(pneumonia) >= threshold calls pneumonia ({threshold_rule}); null: 0.5 "
                          "(argmax without a normal class)",
        "referral_margin": rule.margin,
        "referral_rule": decision.RULE,
        "onnx": served,
        "onnx_fp32": artifact.ONNX_FILE,
        "onnx_outputs": artifact.ONNX_OUTPUTS,
        "out_of_distribution": guard.describe(),
        "onnx_max_abs_diff": onnx_diff,
        "weights": "model.pt",
        "data_fingerprint": fingerprint,
        "data": {name: len(split) for name, split in splits.items()},
        "hyperparameters": hyperparameters(args),
        **extra,
    }
    (model_dir / "model.json").write_text(json.dumps(config, indent=1))
    result["model_id"] = config["model_id"]  # what its predictions and review tasks name it by (cxr status)
    (model_dir / "metrics.json").write_text(json.dumps(result, indent=1))
    benchmark.write(model_dir, score_benchmark(args, served_logits, classes, temperature, prior, rule))
    report_dir = model_dir / "report"
    report_dir.mkdir(exist_ok=True)
    channel = Path(args.test if evaluated_on == "test" else args.validation)
    write_report(model, splits[evaluated_on], f"{evaluated_on} split", channel, config, probs, probs_before,
                 report_dir / report.REPORT_FILE)
    artifact.write_code_dir(source_dir, model_dir)
    output_dir = Path(args.output_data_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_dir / "metrics.json", output_dir / "metrics.json")
    shutil.copytree(report_dir, output_dir / "report", dirs_exist_ok=True)
    return result


def calibration_images(train: data.Split, seed: int) -> np.ndarray:
    """The training inputs INT8 calibration reads: a seeded sample, not the whole split in float32."""
    picked = np.sort(np.random.default_rng(seed).permutation(len(train))[:quantize.CALIBRATION_IMAGES])
    return train.inputs[torch.from_numpy(picked)].numpy()


def score_benchmark(args, served_logits: Callable[[data.Split], np.ndarray], classes, temperature, prior,
                    rule) -> dict:
    """The served model's answers on the benchmark channel (empty when the dataset has no set yet)."""
    channel = Path(args.benchmark) if args.benchmark else None
    records = data.read_records(channel) if channel and channel.exists() else []
    if not records:
        return benchmark.answers([], np.zeros((0, len(classes))), classes, rule)
    split = data.load_split(channel, classes, args.image_size, args.resize_policy,
                            max(1, torch.get_num_threads()), intensity=args.intensity)
    probs = decision.probabilities(served_logits(split), classes, temperature, prior)
    return benchmark.answers(split.records, probs, classes, rule)


def write_report(model: torch.nn.Module, split: data.Split, name: str, channel: Path, config: dict,
                 probs: np.ndarray, probs_before: np.ndarray, path: Path) -> None:
    """The evaluation report of the split the metrics describe, heat maps drawn on the stored PNGs."""
    exported = networks.Exported(artifact.cpu_copy(model)).eval()  # its inputs are CPU tensors

    def overlay(i: int, k: int) -> bytes:
        with torch.no_grad():
            cam = exported(split.inputs[i: i + 1])[1][0, k].numpy()
        stored = imaging.open_stored(split.stored_png(channel, i))
        return base64.b64decode(inference.explanation(stored, cam, config["resize_policy"])["overlay_png"])

    referred, band = report.referrals(probs, config["classes"], config)
    evaluation = report.Evaluation(
        config=config, evaluated_on=name, y=split.targets.numpy(),
        probs=probs, content_hashes=[r["content_hash"] for r in split.records], overlay=overlay,
        referred=referred, band=band, probs_uncalibrated=probs_before)
    path.write_text(report.render(evaluation))


def member_arguments(args: argparse.Namespace, k: int) -> argparse.Namespace:
    """Member ``k`` of ``--ensemble``: seed + k, and its own checkpoint folder after the first (a one-network
    job's checkpoints stay where they were), so a restarted job skips the members it finished."""
    if not k:
        return args
    return argparse.Namespace(**{**vars(args), "seed": args.seed + k,
                                 "checkpoint_dir": str(Path(args.checkpoint_dir) / f"member-{k}")})


def train_member(args, k: int, splits, classes, device, dtype, world, state,
                 pretrained_name) -> tuple[Trainer, Path | None]:
    """Member ``k``, trained as a one-network job with its seed trains it (random start, data order and
    augmentation), resumed from its last checkpoint if it has one."""
    args = member_arguments(args, k)
    if k:  # the first member starts from main's seeding, as a one-network job does
        seed_everything(args.seed, bool(args.deterministic))
    model = networks.build(args.architecture, len(classes), args.width, args.dropout)
    if state is not None:
        missing = networks.load_pretrained(model, state)
        print(json.dumps({"pretrained": pretrained_name, "missing_keys": missing}), flush=True)
    trainer = Trainer(args, model, splits, classes, device, dtype, world)
    resumed = trainer.resume()
    if resumed:
        trainer.say({"resumed_from": resumed.name, "global_step": trainer.state["global_step"],
                     "samples_in_epoch": trainer.state["samples_in_epoch"], "world_size": world.size})
    signal.signal(signal.SIGTERM, lambda *_: setattr(trainer, "stop_requested", True))
    trainer.run()
    return trainer, resumed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.cpu_kernels == "baseline":
        pin_cpu_kernels()
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed, bool(args.deterministic))
    world = distributed.World.from_environment()
    device = distributed.start(world)
    dtype = choose_precision(args.precision, device)
    splits, classes = load_channels(args, evaluating=world.is_main, world=world)
    print(json.dumps({"rank": world.rank, "world_size": world.size, "classes": classes,
                      "images": {k: len(v) for k, v in splits.items()}, "device": str(device),
                      "autocast": str(dtype), "threads": torch.get_num_threads(),
                      "hyperparameters": hyperparameters(args)}), flush=True)
    state, pretrained_name = pretrained_state(args.pretrained, args.architecture)
    if state is not None and args.architecture not in networks.EFFICIENTNET_LITE:
        # The pipeline ships the ImageNet weights to every job; only the EfficientNet-Lite networks use them.
        print(json.dumps({"note": f"pretrained channel not used: {args.architecture} has no ImageNet weights"}),
              flush=True)
        state = pretrained_name = None
    if state is None and args.architecture in networks.EFFICIENTNET_LITE:
        print(json.dumps({"warning": f"no pretrained channel: {args.architecture} starts from random weights, "
                                     "which needs far more epochs than the presets use"}), flush=True)
    members = [train_member(args, k, splits, classes, device, dtype, world, state, pretrained_name)
               for k in range(args.ensemble)]
    trainer, resumed = members[0][0], next((r for _, r in members if r), None)
    # every rank's training records, where each held its own shards: the fingerprint is of the whole split
    if trainer.walk and world.size > 1:
        trainer.train_records = [r for part in distributed.gather(trainer.train_records, world) for r in part]
    distributed.finish(world)
    if not world.is_main:
        distributed.leave()
    extra = {"distributed": {"world_size": world.size, "global_batch": trainer.global_batch,
                             "peak_lr": trainer.peak_lr},
             "pretrained": pretrained_name, "resumed_from": resumed.name if resumed else None,
             "device": str(device), "autocast": str(dtype), "torch": torch.__version__,
             "finished": datetime.now(UTC).isoformat(), "training_seconds": round(time.perf_counter() - started, 1)}
    result = evaluate_and_write(args, [t for t, _ in members], splits, classes, Path(__file__).resolve().parent,
                                extra)
    summary = {k: result[k] for k in ("evaluated_on", "accuracy", "macro_f1", "roc_auc")}
    if "binary" in result:
        summary["binary"] = {k: result["binary"][k] for k in ("accuracy", "roc_auc", "sensitivity", "specificity")}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
