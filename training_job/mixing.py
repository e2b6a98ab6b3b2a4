"""Mixup (Zhang et al. 2018, arXiv:1710.09412): train on convex blends of two images and of their labels.

A blend of two X-rays is no X-ray, but the loss it carries asks for answers that change linearly between
training images instead of jumping at the acquisitions the model has seen, which is what a shifted
acquisition lands between. One weight per batch, drawn from Beta(alpha, alpha) by a NumPy generator seeded
from the trainer's augmentation stream (torch's Beta sampler takes no generator), and a permutation from
that stream: a resumed run draws the same blends. ``alpha`` 0 leaves the batch and the stream untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def mixup(images: torch.Tensor, generator: torch.Generator, alpha: float) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                                   float]:
    """The blended batch, the permutation that gives each image its partner (None: no blend) and the weight
    of the image itself."""
    if alpha <= 0:
        return images, None, 1.0
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
    weight = float(np.random.default_rng(seed).beta(alpha, alpha))
    partner = torch.randperm(len(images), generator=generator).to(images.device)
    return weight * images + (1 - weight) * images[partner], partner, weight


def loss(per_sample: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor, partner: torch.Tensor | None,
         weight: float) -> torch.Tensor:
    """``per_sample(targets)`` blended with the partners' targets by the same weight as the images."""
    if partner is None:
        return per_sample(targets)
    return weight * per_sample(targets) + (1 - weight) * per_sample(targets[partner])
