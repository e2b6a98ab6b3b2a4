"""Data-parallel training under ``torchrun``: the process group, each rank's share of a global batch, agreement.

SageMaker's PyTorch training container starts ``train.py`` through ``torchrun`` when the job's
hyperparameters hold ``sagemaker_torch_distributed_enabled`` (sagemaker-pytorch-training's
``training.py`` picks sagemaker-training's ``TorchDistributedRunner``): one process per GPU on each
host (``sagemaker_mpi_num_of_processes_per_host`` overrides the count), with ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. Without them (``python train.py``, ``cxr
train-local``) the world is one process and nothing here communicates.

Every rank walks the same seeded permutation of the training split; a global batch is ``batch-size``
images per rank, and :func:`share` gives each rank its disjoint part with torch's own
``DistributedSampler`` rule. The gradients DDP averages are the gradients of the global batch's
weighted mean loss (:func:`loss_scale`), so one step on N ranks equals one step of one process on the
same global batch (batch-norm statistics aside, which each rank computes on its own part).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
from torch import distributed as dist
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone validates, writes checkpoints and writes the artifact."""
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> World:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def start(world: World) -> torch.device:
    """Join the process group (nccl on GPUs, gloo on CPUs) and return this rank's device."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", world.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world.size > 1:
        dist.init_process_group("nccl" if cuda else "gloo", rank=world.rank, world_size=world.size)
    return device


def finish(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def leave() -> NoReturn:
    """End a rank that has nothing left to do (rank 0 writes the model) without interpreter finalization.

    Gloo's worker threads can still hold tensors when Python finalizes, and freeing them then aborts the
    process (pytorch/pytorch#179291 describes the mechanism): a second rank aborted this way after training,
    "terminate called without an active exception", in about one clean-clone test run in two at round 2, stop 8,
    and torchrun then fails the job whose model rank 0 was still writing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def share(global_index: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's part of a global batch: every ``size``-th index from ``rank`` (DistributedSampler's rule)."""
    picked = list(DistributedSampler(global_index, num_replicas=world.size, rank=world.rank, shuffle=False,
                                     drop_last=True))
    return global_index[picked]


def loss_scale(global_weights: torch.Tensor, world: World) -> float:
    """What a rank's summed per-sample losses are multiplied by: DDP averages the ranks' gradients, so
    ``size / sum(weights of the global batch)`` makes that average the gradient of the global batch's
    weighted mean (what ``F.cross_entropy(weight=...)`` takes over one process's batch)."""
    return world.size / float(global_weights.sum())


def _device() -> torch.device:
    """Where collectives take their tensors: nccl only moves CUDA tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank when it is true on one (a SIGTERM reaches the ranks at different steps)."""
    if world.size == 1:
        return flag
    value = torch.tensor([int(flag)], device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def reduce_min(value: int, world: World) -> int:
    """The least of the ranks' ``value`` (on every rank)."""
    return _reduce(value, world, dist.ReduceOp.MIN) if world.size > 1 else value


def reduce_sum(value: torch.Tensor, world: World) -> torch.Tensor:
    """The sum of the ranks' tensors (on every rank)."""
    return _reduce(value, world, dist.ReduceOp.SUM) if world.size > 1 else value


def _reduce(value, world: World, op):
    tensor = torch.as_tensor(value).to(_device()).clone()
    dist.all_reduce(tensor, op=op)
    return tensor.item() if tensor.ndim == 0 else tensor.to(torch.as_tensor(value).device)


def from_main(value: float, world: World) -> float:
    """Rank 0's value on every rank, so that early stopping decides alike everywhere."""
    if world.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, world: World) -> list:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if world.size == 1:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
