"""Part of an epoch of the real ``shard_epochs.ShardWalk`` on this rank's own shards; records what it took.

``walk_probe.py CHANNEL OUT [--resume STATE] [--stop STEPS]``: under torchrun the ranks deal the channel's shards
out between them; each writes ``taken-<rank>-of-<size>.json`` (the images it took, in order) and rank 0 the
walk's checkpoint state (``state-of-<size>.pt``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training_job"))

import data  # noqa: E402
import distributed  # noqa: E402
import shard_epochs  # noqa: E402
import torch  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("channel", type=Path)
parser.add_argument("out", type=Path)
parser.add_argument("--resume", type=Path)
parser.add_argument("--stop", type=int)
args = parser.parse_args()
world = distributed.World.from_environment()
distributed.start(world)
own = shard_epochs.own_shards(data.shard_files(args.channel), world)
split = data.load_split(args.channel, ["bacterial", "normal", "viral"], 16, "squash", 1, intensity="linear",
                        only=own)
walk = shard_epochs.ShardWalk(split, world, seed=0, batch_size=2)
exact = walk.restore(torch.load(args.resume, weights_only=False) if args.resume else None)
walk.start(0)
taken, steps = [], 0
while (args.stop is None or steps < args.stop) and walk.steps_left() > 0:
    taken += [walk.ids[i] for i in walk.next_batch().tolist()]
    steps += 1
state = walk.state()
args.out.mkdir(parents=True, exist_ok=True)
(args.out / f"taken-{world.rank}-of-{world.size}.json").write_text(json.dumps(
    {"taken": taken, "shards": walk.shards, "exact": exact}))
if world.is_main:
    torch.save(state, args.out / f"state-of-{world.size}.pt")
distributed.finish(world)
