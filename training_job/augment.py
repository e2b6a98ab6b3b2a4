"""Batch augmentation for chest X-rays, on tensors (cheap next to the network, exact to resume).

Aimed at what differs between acquisitions rather than at the anatomy: exposure (gamma,
contrast), detector resolution (down- then up-sampling, blur), noise, and small positioning
changes (rotation, scale, shift). No horizontal flip: the heart's side is anatomy, not noise.
All randomness comes from the ``generator`` passed in, so a run resumed from a checkpoint
draws the very same augmentations.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

STRENGTHS = ("none", "light", "strong")


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def augment(x: torch.Tensor, generator: torch.Generator, strength: str = "strong") -> torch.Tensor:
    """Augment a batch ``(N, 1, H, W)`` in [0, 1] (float32); returns a new tensor in [0, 1]."""
    if strength == "none":
        return x
    if strength not in STRENGTHS:
        raise ValueError(f"unknown augmentation strength {strength!r}; expected one of {STRENGTHS}")
    strong = strength == "strong"
    n, _, h, w = x.shape
    # Positioning: rotation, isotropic scale and shift in one affine resampling.
    angle = _uniform(n, -10, 10, generator) * (math.pi / 180) * (1 if strong else 0.5)
    scale = _uniform(n, 0.88 if strong else 0.95, 1.12 if strong else 1.05, generator)
    shift = _uniform(2 * n, -0.06, 0.06, generator).view(n, 2) * (1 if strong else 0.5)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Resolution: half of the batch goes through a lower-resolution detector.
    low = torch.rand(n, generator=generator) < (0.5 if strong else 0.25)
    factors = _uniform(n, 0.3 if strong else 0.6, 1.0, generator)
    for i in torch.nonzero(low).flatten().tolist():
        size = (max(8, int(h * factors[i])), max(8, int(w * factors[i])))
        small = F.interpolate(x[i: i + 1], size=size, mode="area")
        x[i: i + 1] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    # Exposure: gamma and a contrast stretch around the image mean.
    gamma = torch.exp(_uniform(n, -0.4, 0.4, generator) * (1 if strong else 0.5)).view(n, 1, 1, 1)
    x = x.clamp(0, 1) ** gamma
    contrast = _uniform(n, 0.75 if strong else 0.9, 1.25 if strong else 1.1, generator).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    # Detector noise.
    sigma = _uniform(n, 0, 0.03 if strong else 0.01, generator).view(n, 1, 1, 1)
    x = x + sigma * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)
