"""One optimizer step of the real ``train.Trainer`` on fixed inputs; writes this rank's share and gradients.

Run as ``python ddp_probe.py OUT`` (one process) or under ``torchrun --nproc_per_node 2`` (two ranks, gloo).
The network has no batch normalisation, so the ranks' averaged gradients must equal one process's on the
same global batch (batch statistics would differ per rank by design).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training_job"))

import data  # noqa: E402
import distributed  # noqa: E402
import train  # noqa: E402

out = Path(sys.argv[1])
world = distributed.World.from_environment()
device = distributed.start(world)
torch.manual_seed(0)
images = torch.rand(24, 1, 8, 8, dtype=torch.float16)
targets = torch.tensor([0, 0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1] * 2)  # 10, 8, 6: unequal class weights, and the
# two halves of the batch below weigh differently, so a rank-local mean would give other gradients
split = data.Split([{"key": str(i), "label": str(int(t))} for i, t in enumerate(targets)], images, targets)
args = train.parse_args(["--train", "unused", "--validation", "unused", "--augment", "none", "--ema-decay", "0",
                         "--batch-size", str(8 // world.size), "--dropout", "0", "--label-smoothing", "0.1",
                         "--checkpoint-dir", str(out / "checkpoints")])
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
trainer = train.Trainer(args, model, {"train": split}, ["0", "1", "2"], device, None, world)
global_index = torch.tensor([3, 17, 5, 0, 22, 9, 11, 14])
loss = trainer.train_step(global_index)
torch.save({"share": distributed.share(global_index, world), "loss": loss,
            "grads": {name: p.grad.clone() for name, p in model.named_parameters()}},
           out / f"rank-{world.rank}-of-{world.size}.pt")
distributed.finish(world)
