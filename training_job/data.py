"""Channel reading: the manifest records of a SageMaker channel and their images, as tensors.

A channel made from PrepareDataset's ``ManifestFile`` lands as ``<channel dir>/<relative key>``:
the PNGs under ``processed/...`` and the split's ``manifests/<run>/<split>.jsonl``. Images are
decoded once with the one normaliser's :func:`imaging.to_model_input` (the very resize serving
applies) and kept in memory as float16: 5,216 images at 224 px take about 0.5 GB.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imaging
import numpy as np
import torch


@dataclass
class Split:
    records: list[dict]
    images: torch.Tensor  # (N, 1, S, S) float16 in [0, 1]
    targets: torch.Tensor  # (N,) int64 class indices

    def __len__(self) -> int:
        return len(self.records)


def read_records(channel_dir: Path) -> list[dict]:
    """Every record of the channel's ``*.jsonl`` manifest(s), in file order."""
    manifests = sorted(channel_dir.rglob("*.jsonl"))
    if not manifests:
        raise FileNotFoundError(f"no *.jsonl manifest in channel {channel_dir}")
    records = []
    for path in manifests:
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


def classes_of(records: list[dict]) -> list[str]:
    return sorted({r["label"] for r in records})


def load_split(channel_dir: Path, classes: list[str], size: int, policy: str, threads: int = 4, *,
               intensity: str) -> Split:
    """Every image of a channel as the model sees it; ``intensity`` has no default on purpose: the
    model's own policy (``model.json``) must be passed, or a model would be scored on other input."""
    records = read_records(channel_dir)
    unknown = {r["label"] for r in records} - set(classes)
    if unknown:
        raise ValueError(f"channel {channel_dir.name} has labels {sorted(unknown)} outside the classes {classes}")

    def load(record: dict) -> np.ndarray:
        png = (channel_dir / record["key"]).read_bytes()
        return imaging.to_model_input(imaging.open_stored(png), size, policy, intensity).astype(np.float16)

    with ThreadPoolExecutor(threads) as pool:
        arrays = list(pool.map(load, records))
    images = torch.from_numpy(np.stack(arrays)[:, None]) if arrays else torch.zeros((0, 1, size, size))
    targets = torch.tensor([classes.index(r["label"]) for r in records], dtype=torch.int64)
    return Split(records, images, targets)


def fingerprint(splits: dict[str, Split]) -> str:
    """What the model was trained on: a hash of each split's sorted content hashes and labels."""
    digest = hashlib.sha256()
    for name in sorted(splits):
        for h, label in sorted((r.get("content_hash", r["key"]), r["label"]) for r in splits[name].records):
            digest.update(f"{name}:{h}:{label}\n".encode())
    return digest.hexdigest()
