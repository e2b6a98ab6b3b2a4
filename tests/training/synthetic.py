"""A tiny, learnable chest-X-ray-shaped dataset generated on the fly (Kermany file names, three classes)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {"normal": ("NORMAL", "IM-{p:04d}-0001.jpeg"),
           "bacterial": ("PNEUMONIA", "person{p}_bacteria_{i}.jpeg"),
           "viral": ("PNEUMONIA", "person{p}_virus_{i}.jpeg")}


def xray(label: str, rng: np.random.Generator, size: tuple[int, int] = (72, 60)) -> np.ndarray:
    """Two dark lung fields on a bright body; pneumonia adds a bright opacity, bacterial focal, viral diffuse."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    image = 170 + 40 * rng.random() - 30 * yy
    for cx in (0.3, 0.7):
        lung = ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1
        image = np.where(lung, image - 110, image)
    if label == "bacterial":
        cx, cy = rng.choice([0.3, 0.7]), rng.uniform(0.4, 0.65)
        image += 110 * np.exp(-(((xx - cx) / 0.08) ** 2 + ((yy - cy) / 0.08) ** 2))
    elif label == "viral":
        image += 60 * (np.sin(xx * 40 + rng.random() * 6) * np.sin(yy * 40) > 0.2)
    image += rng.normal(0, 6, size)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_dataset(root: Path, per_class: int = 12, seed: int = 0, fmt: str = "JPEG") -> Path:
    """``root/<LABEL>/<Kermany-style name>``: one patient per normal image, two images per pneumonia patient."""
    rng = np.random.default_rng(seed)
    for label, (folder, pattern) in CLASSES.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            patient = {"normal": 1000, "bacterial": 2000, "viral": 3000}[label] + (i if label == "normal" else i // 2)
            name = pattern.format(p=patient, i=i)
            Image.fromarray(xray(label, rng)).save(root / folder / name, format=fmt, quality=95)
    return root


def encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


TINY_HPS = {"architecture": "compact", "width": 8, "image-size": 32, "epochs": 3, "batch-size": 8, "lr": 0.003,
            "checkpoint-steps": 2, "keep-checkpoints": 100, "threads": 1, "ema-decay": 0.9}
"""A few seconds of CPU: 36 training images, 4 steps an epoch, a checkpoint every 2 steps."""
