"""Acquisition-invariance augmentation (training_job/augment.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training_job"))

import augment  # noqa: E402


@pytest.mark.parametrize("strength", augment.STRENGTHS)
def test_augmentation_stays_in_range_and_replays_from_its_generator(strength):
    x = torch.rand(16, 1, 32, 32)
    first = augment.augment(x.clone(), torch.Generator().manual_seed(5), strength)
    again = augment.augment(x.clone(), torch.Generator().manual_seed(5), strength)
    assert first.shape == x.shape and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, again)


def test_acquisition_strength_adds_frames_and_markers_to_a_flat_grey_film():
    grey = torch.full((64, 1, 48, 48), 0.5)
    strong = augment.augment(grey.clone(), torch.Generator().manual_seed(0), "strong")
    acquisition = augment.augment(grey.clone(), torch.Generator().manual_seed(0), "acquisition")
    # exposure and noise alone never reach the extremes from mid-grey; frames and markers do
    assert (strong > 0.95).float().mean() < 0.001 and (strong < 0.05).float().mean() < 0.001
    assert (acquisition > 0.95).flatten(1).any(1).float().mean() > 0.3  # markers or white frames
    assert (acquisition < 0.05).flatten(1).any(1).float().mean() > 0.08  # black frames (a third framed, 70 % black)
