"""Batch augmentation for chest X-rays, on tensors (cheap next to the network, exact to resume).

Aimed at what differs between acquisitions rather than at the anatomy: exposure (gamma,
contrast), detector resolution (down- then up-sampling, blur), noise, and small positioning
changes (rotation, scale, shift). ``acquisition`` adds what the image statistics of the
shift proxies (cxr/proxies.py) separate acquisitions by: off-centre crops (field of view),
black or white frames (collimation, film edges) and burned-in text-like markers.
No horizontal flip: the heart's side is anatomy, not noise.
All randomness comes from the ``generator`` passed in (a CPU generator: the draws are made on the
CPU and moved to the batch's device), so a run resumed from a checkpoint draws the very same
augmentations, and a batch on a GPU is augmented there instead of holding the GPU up behind the
CPU (the ``gpu`` preset's 288 px batches).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

STRENGTHS = ("none", "light", "strong", "acquisition")


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def augment(x: torch.Tensor, generator: torch.Generator, strength: str = "strong") -> torch.Tensor:
    """Augment a batch ``(N, 1, H, W)`` in [0, 1] (float32); returns a new tensor in [0, 1]."""
    if strength == "none":
        return x
    if strength not in STRENGTHS:
        raise ValueError(f"unknown augmentation strength {strength!r}; expected one of {STRENGTHS}")
    strong = strength in ("strong", "acquisition")
    n, _, h, w = x.shape
    if strength == "acquisition":
        x = _crop(x, generator)
    # Positioning: rotation, isotropic scale and shift in one affine resampling.
    angle = _uniform(n, -10, 10, generator) * (math.pi / 180) * (1 if strong else 0.5)
    scale = _uniform(n, 0.88 if strong else 0.95, 1.12 if strong else 1.05, generator)
    shift = _uniform(2 * n, -0.06, 0.06, generator).view(n, 2) * (1 if strong else 0.5)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Resolution: half of the batch goes through a lower-resolution detector.
    low = torch.rand(n, generator=generator) < (0.5 if strong else 0.25)
    factors = _uniform(n, 0.3 if strong else 0.6, 1.0, generator)
    for i in torch.nonzero(low).flatten().tolist():
        size = (max(8, int(h * factors[i])), max(8, int(w * factors[i])))
        small = F.interpolate(x[i: i + 1], size=size, mode="area")
        x[i: i + 1] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    # Exposure: gamma and a contrast stretch around the image mean.
    gamma = torch.exp(_uniform(n, -0.4, 0.4, generator) * (1 if strong else 0.5)).view(n, 1, 1, 1).to(x.device)
    x = x.clamp(0, 1) ** gamma
    contrast = _uniform(n, 0.75 if strong else 0.9, 1.25 if strong else 1.1, generator).view(n, 1, 1, 1).to(x.device)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    # Detector noise.
    sigma = _uniform(n, 0, 0.03 if strong else 0.01, generator).view(n, 1, 1, 1)
    x = x + (sigma * torch.randn(x.shape, generator=generator)).to(x.device)
    if strength == "acquisition":
        x = _markers(_frames(x.clamp(0, 1), generator), generator)
    return x.clamp(0, 1)


def _crop(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Half of the batch: an off-centre crop of 75-100 % of each side, resized back (a tighter field of view)."""
    n, _, h, w = x.shape
    x = x.clone()
    chosen = torch.rand(n, generator=generator) < 0.5
    sides = _uniform(n, 0.75, 1.0, generator)
    corners = torch.rand(n, 2, generator=generator)
    for i in torch.nonzero(chosen).flatten().tolist():
        ch, cw = max(4, int(h * sides[i])), max(4, int(w * sides[i]))
        top, left = int((h - ch) * corners[i, 0]), int((w - cw) * corners[i, 1])
        x[i: i + 1] = F.interpolate(x[i: i + 1, :, top: top + ch, left: left + cw], size=(h, w), mode="bilinear",
                                    align_corners=False)
    return x


def _frames(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A third of the batch: black or white bands up to 10 % deep along random edges."""
    n, _, h, w = x.shape
    chosen = torch.rand(n, generator=generator) < 1 / 3
    depths = _uniform(4 * n, 0.0, 0.1, generator).view(n, 4)
    edges = torch.rand(n, 4, generator=generator) < 0.5
    levels = (torch.rand(n, generator=generator) < 0.7).float()  # mostly black (collimation), else white
    for i in torch.nonzero(chosen).flatten().tolist():
        top, bottom, left, right = (int(d * s) if e else 0
                                    for d, s, e in zip(depths[i].tolist(), (h, h, w, w), edges[i].tolist(),
                                                       strict=True))
        x[i, :, :top], x[i, :, h - bottom:], x[i, :, :, :left], x[i, :, :, w - right:] = (float(levels[i]),) * 4
    return x


def _markers(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Half of the batch: one to three burned-in text-like markers (bright strokes in a box near an edge)."""
    n, _, h, w = x.shape
    chosen = torch.rand(n, generator=generator) < 0.5
    counts = torch.randint(1, 4, (n,), generator=generator)
    for i in torch.nonzero(chosen).flatten().tolist():
        for _ in range(int(counts[i])):
            bh = max(2, int(h * float(_uniform(1, 0.04, 0.1, generator))))
            bw = max(2, int(w * float(_uniform(1, 0.06, 0.25, generator))))
            top = int(torch.randint(0, max(1, h - bh), (1,), generator=generator))
            left = int(torch.randint(0, max(1, w - bw), (1,), generator=generator))
            # glyph-like strokes: a random on/off pattern of columns, white on the image
            strokes = (torch.rand(bw, generator=generator) < 0.6).float().view(1, 1, bw).to(x.device)
            region = x[i, :, top: top + bh, left: left + bw]
            x[i, :, top: top + bh, left: left + bw] = torch.maximum(region, strokes.expand_as(region) * 0.98)
    return x
