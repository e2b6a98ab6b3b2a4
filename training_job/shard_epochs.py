"""Epochs over a training split read from shards, when each rank holds only its own shards.

Under ``ShardedByS3Key`` a host sees only its part of the shards, so ranks can no longer walk one shared
permutation of the whole split (what :mod:`distributed` does for a replicated split). Here:

* **Which shards a rank reads** (:func:`own_shards`): ranks that see the same shards (the processes of one
  host, or every rank when the channel is replicated) deal them out, every k-th shard from their place among
  those k ranks; ranks that see different shards (other hosts) must see disjoint ones.
* **An epoch** (:class:`ShardWalk`): each rank walks a seeded permutation of its own images, ``batch-size`` at
  a time; every rank takes the same number of steps (the fewest whole batches any rank has left), so DDP's
  collectives pair up. One rank holding every shard walks ``randperm(N, seed * 1000 + epoch)``, the very order
  of a ``ManifestFile`` channel, so a one-instance job trains as it did before shards.
* **Resume**: an image is named by (shard, position in the shard), the same on every world size. A checkpoint
  records each rank's shards and place in its walk, and the set of images the epoch has already taken. On the
  same ranks holding the same shards the walk resumes exactly (same order, same place, the ranks' random
  streams restored by train.py). On any other world size or shard assignment each new rank walks a fresh
  permutation of its own images less those already taken: the epoch still takes every image at most once and
  ends as an epoch does (the last partial batches dropped); only the order of the rest differs from an
  uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import data
import distributed
import torch

ORDER_SEED_STRIDE = 1_000_003
"""Keeps the ranks' permutation seeds apart (rank 0's is ``seed * 1000 + epoch``, a replicated channel's)."""


def own_shards(visible: list[Path], world: distributed.World) -> list[Path]:
    """This rank's shards of those it can see (sorted by name); every rank calls it (a collective)."""
    visible = sorted(visible, key=lambda p: p.name)
    names = [p.name for p in visible]
    seen = distributed.gather(names, world)
    for other in seen:
        if other != names and set(other) & set(names):
            raise SystemExit("ranks see overlapping but different shards: a channel must be replicated or "
                             "ShardedByS3Key, not a mix")
    peers = [rank for rank, other in enumerate(seen) if other == names]
    mine = visible[peers.index(world.rank)::len(peers)]
    if not mine:
        raise SystemExit(f"rank {world.rank} has no shard: {len(visible)} shards for {len(peers)} ranks here; "
                         "prepare the dataset with at least as many shards as ranks")
    return mine


class ShardWalk:
    """One rank's way through each epoch of its own images (``split``: this rank's part, from its shards)."""

    def __init__(self, split: data.Split, world: distributed.World, seed: int, batch_size: int):
        self.world, self.seed, self.batch_size = world, seed, batch_size
        self.ids = split.sample_ids()
        self.shards = [path.name for path, _ in split.parts]
        self.skip: set[tuple[str, int]] = set()  # taken before this walk began (a resume on other ranks)
        self.position = 0
        self.order = torch.zeros(0, dtype=torch.int64)

    def start(self, epoch: int) -> None:
        """This rank's order for ``epoch``: its images less ``skip``, walked from ``position``."""
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch + ORDER_SEED_STRIDE * self.world.rank)
        order = torch.randperm(len(self.ids), generator=generator)
        if self.skip:
            order = order[torch.tensor([self.ids[i] not in self.skip for i in order.tolist()], dtype=torch.bool)]
        self.order = order

    def steps_left(self) -> int:
        """Whole batches every rank still has (a collective); an epoch's first step runs even when one is short."""
        left = distributed.reduce_min((len(self.order) - self.position) // self.batch_size, self.world)
        if left == 0 and self.position == 0 and not self.skip:
            return 1 if distributed.reduce_min(len(self.order), self.world) > 0 else 0
        return left

    def next_batch(self) -> torch.Tensor:
        batch = self.order[self.position: self.position + self.batch_size]
        self.position += len(batch)
        return batch

    def end_epoch(self) -> None:
        self.skip, self.position = set(), 0

    def taken(self) -> set[tuple[str, int]]:
        return self.skip | {self.ids[i] for i in self.order[: self.position].tolist()}

    def state(self) -> dict:
        """What a checkpoint records of the epoch in progress (a collective: every rank's part gathered)."""
        parts = distributed.gather({"shards": self.shards, "position": self.position, "taken": self.taken()},
                                   self.world)
        return {"ranks": [{"shards": p["shards"], "position": p["position"]} for p in parts],
                "skip": sorted(self.skip), "taken": sorted(set().union(*(p["taken"] for p in parts)))}

    def restore(self, state: dict | None) -> bool:
        """Continue the epoch a checkpoint stopped in (the next :meth:`start` walks from there); True when exactly
        (same ranks holding the same shards). A collective."""
        self.skip, self.position = set(), 0
        if not state:
            return distributed.reduce_min(1, self.world) == 1
        ranks = state["ranks"]
        same = len(ranks) == self.world.size and ranks[min(self.world.rank, len(ranks) - 1)]["shards"] == self.shards
        exact = distributed.reduce_min(int(same), self.world) == 1
        if exact:
            self.skip, self.position = {tuple(i) for i in state["skip"]}, ranks[self.world.rank]["position"]
        else:
            self.skip = {tuple(i) for i in state["taken"]}
        return exact
