"""Channel reading: the manifest records of a SageMaker channel and their images, as tensors.

A channel made from PrepareDataset's ``ManifestFile`` lands as ``<channel dir>/<relative key>``:
the PNGs under ``processed/...`` and the split's ``manifests/<run>/<split>.jsonl``. Images are
decoded once with the one normaliser's :func:`imaging.to_model_input` (the very resize serving
applies) and kept in memory as its 8-bit grey levels (``Split.pixels``, one byte a pixel): 5,216 images at
224 px take about 0.26 GB, 200,000 at 160 px 5.1 GB (float16 took twice that). ``Split.inputs`` gives any part
of them as the model takes them, float32 in [0, 1], exactly the values serving computes.

A channel of PrepareDataset's tar shards (``NNNNNN.tar``, :mod:`shards`) is read instead shard by shard,
front to back: start-up opens one file a shard, not one an image, which is what ``FastFile`` streams well.
``load_split(..., shard_files=...)`` reads only the shards given (a rank's own share).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import imaging
import numpy as np
import shards
import torch

DECODE_BATCH = 256


def to_inputs(pixels: torch.Tensor) -> torch.Tensor:
    """:func:`imaging.model_levels` as the model's input: float32 ``level / 255``, the values
    :func:`imaging.to_model_input` returns."""
    return pixels.float().div_(255.0)


class Inputs:
    """A split's pixels seen as model inputs: ``inputs[i]``, ``inputs[a:b]`` or ``inputs[index_tensor]`` is float32,
    converted from the slice alone, so a caller walking the split in batches never holds it all in float32."""

    def __init__(self, pixels: torch.Tensor):
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index) -> torch.Tensor:
        return to_inputs(self.pixels[index])


@dataclass
class Split:
    records: list[dict]
    pixels: torch.Tensor  # (N, 1, S, S) uint8: the model input's grey levels
    targets: torch.Tensor  # (N,) int64 class indices
    parts: list[tuple[Path, int]] = field(default_factory=list)
    """The shards the split was read from and how many images each gave, in order (none for a manifest channel)."""

    def __len__(self) -> int:
        return len(self.records)

    @property
    def inputs(self) -> Inputs:
        return Inputs(self.pixels)

    def sample_ids(self) -> list[tuple[str, int]]:
        """Each image as (shard name, position in the shard): the same on every world size, so a checkpoint can
        say which images an epoch has seen whichever rank read them."""
        return [(path.name, offset) for path, count in self.parts for offset in range(count)]

    def stored_png(self, channel_dir: Path, index: int) -> bytes:
        """Image ``index`` as stored (the processed PNG): read from its shard, or its file."""
        key = self.records[index]["key"]
        for path, count in self.parts:
            if index < count:
                return next(png for record, png in _stream(path) if record["key"] == key)
            index -= count
        return (channel_dir / key).read_bytes()


def shard_files(channel_dir: Path) -> list[Path]:
    """The channel's shards in name order (= the split's jsonl order); empty for a ``ManifestFile`` channel."""
    return sorted(channel_dir.rglob("*.tar"))


def shard_records(paths: list[Path]) -> list[dict]:
    """The records of these shards, in order: each shard's first member only."""
    records = []
    for path in paths:
        with path.open("rb") as stream:
            records += shards.records(stream)
    return records


def read_records(channel_dir: Path) -> list[dict]:
    """Every record of the channel's ``*.jsonl`` manifest(s), in file order (or of its shards, in shard order)."""
    if packed := shard_files(channel_dir):
        return shard_records(packed)
    manifests = sorted(channel_dir.rglob("*.jsonl"))
    if not manifests:
        raise FileNotFoundError(f"no *.jsonl manifest in channel {channel_dir}")
    records = []
    for path in manifests:
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


def _stream(path: Path):
    with path.open("rb") as stream:
        yield from shards.read(stream)


def classes_of(records: list[dict]) -> list[str]:
    return sorted({r["label"] for r in records})


def load_split(channel_dir: Path, classes: list[str], size: int, policy: str, threads: int = 4, *,
               intensity: str, only: list[Path] | None = None) -> Split:
    """Every image of a channel as the model sees it (of the shards ``only``, when given); ``intensity`` has no
    default on purpose: the model's own policy (``model.json``) must be passed, or a model would be scored on
    other input."""
    packed = shard_files(channel_dir) if only is None else only
    parts: list[tuple[Path, int]] = []
    if packed:  # the shards' records first (their first members), then each shard front to back
        records = []
        for path in packed:
            with path.open("rb") as stream:
                found = shards.records(stream)
            records += found
            parts.append((path, len(found)))
        pngs = (png for path in packed for _, png in _stream(path))
    else:
        records = read_records(channel_dir)
        pngs = ((channel_dir / r["key"]).read_bytes() for r in records)
    unknown = {r["label"] for r in records} - set(classes)
    if unknown:
        raise ValueError(f"channel {channel_dir.name} has labels {sorted(unknown)} outside the classes {classes}")

    def load(png: bytes) -> np.ndarray:
        return imaging.model_levels(imaging.open_stored(png), size, policy, intensity)

    # filled in place, a bounded batch in flight: Executor.map drains its iterable first (from shards, every PNG's
    # bytes at once), and stacking a list of arrays would hold the split twice
    pixels = torch.empty((len(records), 1, size, size), dtype=torch.uint8)
    filled = 0
    with ThreadPoolExecutor(threads) as pool:
        while batch := list(itertools.islice(pngs, DECODE_BATCH)):
            pixels[filled: filled + len(batch), 0] = torch.from_numpy(np.stack(list(pool.map(load, batch))))
            filled += len(batch)
    if filled != len(records):
        raise ValueError(f"channel {channel_dir.name}: {filled} images for {len(records)} records")
    targets = torch.tensor([classes.index(r["label"]) for r in records], dtype=torch.int64)
    return Split(records, pixels, targets, parts)


def fingerprint(records: dict[str, list[dict]]) -> str:
    """What the model was trained on: a hash of each split's sorted content hashes and labels."""
    digest = hashlib.sha256()
    for name in sorted(records):
        for h, label in sorted((r.get("content_hash", r["key"]), r["label"]) for r in records[name]):
            digest.update(f"{name}:{h}:{label}\n".encode())
    return digest.hexdigest()
