"""LP-FT (``--probe-epochs``): the first epochs train the classifier alone on a frozen body, batch-norm statistics
included; then everything trains."""

from __future__ import annotations

import pytest
import torch
from synthetic import TINY_HPS

from cxr import training_run


def checkpoints(out) -> dict[int, dict[str, torch.Tensor]]:
    """The raw weights at every checkpoint, by optimizer step."""
    return {int(p.stem.split("-")[1]): torch.load(p, weights_only=False)["model"]
            for p in sorted((out / "checkpoints").glob("ckpt-*.pt"))}


def changed(before: dict, after: dict, prefix: str) -> set[str]:
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("probe_epochs", [0, 1])
def test_probe_epochs_hold_the_body_then_train_everything(staged, tmp_path, probe_epochs):
    out = tmp_path / "job"
    training_run.run_training_job(staged.channels, {**TINY_HPS, "epochs": 2, "ema-decay": 0,
                                                    "probe-epochs": probe_epochs}, out)
    found = checkpoints(out)  # 4 steps an epoch, a checkpoint every 2: steps 2 and 4 lie in the first epoch
    during_first, end_of_first, end = found[2], found[4], found[max(found)]
    assert changed(during_first, end_of_first, "classifier.")
    body_moved = changed(during_first, end_of_first, "body.")
    if probe_epochs:
        assert not body_moved  # weights and running statistics alike
        assert {k for k in changed(end_of_first, end, "body.") if k.endswith("running_mean")}
        assert {k for k in changed(end_of_first, end, "body.") if k.endswith("weight")}
    else:
        assert {k for k in body_moved if k.endswith("running_mean")} and {k for k in body_moved if k.endswith("weight")}


def test_probe_epochs_must_leave_epochs_to_train_everything(staged, tmp_path):
    with pytest.raises(Exception, match="exited with status 2"):
        training_run.run_training_job(staged.channels, {**TINY_HPS, "epochs": 2, "probe-epochs": 2}, tmp_path / "job")
    assert "--probe-epochs must leave epochs to train everything" in (tmp_path / "job" / "train.log").read_text()
