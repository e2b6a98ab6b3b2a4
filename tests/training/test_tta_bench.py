"""bench/tta.py's test-time views: one-pixel moves with the edge replicated, exposure by gamma."""

from __future__ import annotations

import importlib

import torch


def _bench():
    return importlib.import_module("bench.tta")


def test_views_move_the_image_one_pixel_each_way_and_replicate_the_edge():
    tta = _bench()
    x = torch.arange(16.0).view(1, 1, 4, 4) / 16
    original, right, left, down, up = tta.views(x, "shifts")
    assert torch.equal(original, x)
    assert torch.equal(right[..., :, 1:], x[..., :, :-1]) and torch.equal(right[..., :, 0], x[..., :, 0])
    assert torch.equal(left[..., :, :-1], x[..., :, 1:]) and torch.equal(left[..., :, -1], x[..., :, -1])
    assert torch.equal(down[..., 1:, :], x[..., :-1, :]) and torch.equal(up[..., :-1, :], x[..., 1:, :])
    assert [v.shape for v in tta.views(x, "shifts-gamma")] == [x.shape] * 7
    assert torch.allclose(tta.views(x, "gamma")[1], x ** 0.8) and len(tta.views(x, "none")) == 1
