"""Mixup (training_job/mixing.py): off leaves training as it was; on, the blends replay from the generator."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training_job"))

import mixing  # noqa: E402


def test_alpha_zero_leaves_the_batch_and_the_generator_untouched():
    x, generator = torch.rand(8, 1, 6, 6), torch.Generator().manual_seed(3)
    state = generator.get_state()
    mixed, partner, kept = mixing.mixup(x, generator, 0.0)
    assert mixed is x and partner is None and kept == 1.0
    assert torch.equal(generator.get_state(), state)  # runs without mixup draw the augmentations they drew before


def test_blends_are_convex_pairs_of_the_batch_and_replay_from_the_generator():
    x = torch.rand(16, 1, 6, 6)
    mixed, partner, kept = mixing.mixup(x, torch.Generator().manual_seed(5), 0.4)
    again, partner_again, kept_again = mixing.mixup(x, torch.Generator().manual_seed(5), 0.4)
    assert torch.equal(mixed, again) and torch.equal(partner, partner_again) and kept == kept_again
    assert 0 < kept < 1 and sorted(partner.tolist()) == list(range(16))
    assert torch.allclose(mixed, kept * x + (1 - kept) * x[partner])


def test_the_loss_blends_both_labels_by_the_images_weight():
    logits, targets = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    partner = torch.tensor([1, 0, 3, 2])

    def per_sample(t):
        return F.cross_entropy(logits, t, reduction="none")

    blended = mixing.loss(per_sample, targets, partner, 0.3)
    assert torch.allclose(blended, 0.3 * per_sample(targets) + 0.7 * per_sample(targets[partner]))
    assert torch.equal(mixing.loss(per_sample, targets, None, 1.0), per_sample(targets))
