"""PneumoniaMNIST with its patients back: each 28 px image matched to the Kermany file it was made from.

Usage::

    python bench/pneumoniamnist_sources.py --npz ../shared/data/pneumoniamnist/pneumoniamnist_trainval.npz \
        --source ../shared/data/kermany-224/train --source ../shared/data/kermany-val16 \
        --out out/pneumoniamnist-named --json bench/results/pneumoniamnist-sources.json

MedMNIST drops the file names, so ``cxr import-medmnist`` gives every image its own patient, and two
films of one child can sit on both sides of a shift proxy (issue 21 asks for every proxy grouped by
patient). MedMNIST made each image from a Kermany file by a centre crop to the short side and a
resize to 28 px. The copies at hand are squashed to 224 x 224 (``kermany-224``: the original aspect
is lost) or kept whole (``kermany-val16``), so each source is cropped at every plausible width of
that square (central bands of 40 to 100 % of either side) and reduced to 7 x 7 block means; an image
takes the source whose crop correlates best, and is named after it only when that correlation is at
least ``MIN_CORRELATION`` and the source's class (its Kermany name says it) agrees with its label.

The folder written holds ``cxr import-medmnist``'s pixels (the same content hashes), all of them
in ``train/<LABEL>/``: MedMNIST's val split shares patients with its train split, and a user's val/
that does costs train those patients (``splits``), so the proxies deal every split themselves. The
names carry the source's patient and MedMNIST's split and index: ``IM-0115-0001-train_00012.png``,
``NORMAL2-IM-...``, ``person12_val_00034.png`` (the sub-type left out, so the label stays binary),
and ``train_00056.png`` when unmatched. ``bench/proxies.py`` on it groups by patient and builds the
sequence folds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxr.commands.import_medmnist import KNOWN_LABELS  # noqa: E402
from lambdas.domain import labels  # noqa: E402

SIDE = 28
BLOCKS = 7
BANDS = np.linspace(0.40, 1.0, 31)
"""Crop widths tried, as a share of the stored side (MedMNIST's square crop of the original)."""
MIN_CORRELATION = 0.99
"""Of the 7 x 7 block means. Matched images read 0.997 to 0.9995 (1st percentile to median, 2026-12-01)."""
NAMES = KNOWN_LABELS["pneumoniamnist"]
"""Label folders by MedMNIST label, as ``cxr import-medmnist`` writes them."""
SPLITS = ("train", "val")


def descriptors(images: np.ndarray) -> np.ndarray:
    """(n, 28, 28) -> (n, 49): block means, centred and scaled to unit length (exposure-free)."""
    n, step = len(images), SIDE // BLOCKS
    blocks = images.astype(np.float32).reshape(n, BLOCKS, step, BLOCKS, step).mean(axis=(2, 4)).reshape(n, -1)
    blocks -= blocks.mean(axis=1, keepdims=True)
    return blocks / (np.linalg.norm(blocks, axis=1, keepdims=True) + 1e-6)


def crops(path: Path) -> np.ndarray:
    """The source's central bands at every width in BANDS, across and down, each resized to 28 px."""
    with Image.open(path) as opened:
        image = opened.convert("L")
    width, height = image.size
    out = []
    for band in BANDS:
        if band == 1.0:
            side = min(width, height)  # MedMNIST's own crop of an unsquashed image
            boxes = [((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2)]
        else:
            w, h = round(width * band), round(height * band)
            boxes = [((width - w) // 2, 0, (width + w) // 2, height), (0, (height - h) // 2, width, (height + h) // 2)]
        out += [np.asarray(image.resize((SIDE, SIDE), Image.BOX, box=box)) for box in boxes]
    return np.stack(out)


def match(images: np.ndarray, sources: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """For every image: the index of the best source and that crop's correlation."""
    wanted = descriptors(images)
    best = np.full(len(images), -1.0, dtype=np.float32)
    owner = np.zeros(len(images), dtype=np.int64)
    for index, path in enumerate(sources):
        similarity = (descriptors(crops(path)) @ wanted.T).max(axis=0)
        better = similarity > best
        best[better], owner[better] = similarity[better], index
    return owner, best


def source_name(path: Path, label: int, split: str, index: int) -> str | None:
    """The written name carrying the source's patient, or None when the source's class disagrees
    (Kermany names say it: ``person*`` pneumonias, ``[NORMAL2-]IM-*`` normals)."""
    series = labels.patient_series(path.name)
    if series is None:
        return None
    normal = series != "person"
    if normal != (label == 0):
        return None
    if normal:
        return f"{path.stem}-{split}_{index:05d}.png"
    return f"person{labels.patient_id(path.name)}_{split}_{index:05d}.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--npz", required=True, type=Path)
    parser.add_argument("--source", action="append", required=True, type=Path, help="folder of Kermany-named files")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--json", required=True, type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    archive = np.load(args.npz)
    sources = sorted(p for root in args.source for p in root.rglob("*")
                     if p.is_file() and labels.patient_series(p.name))  # not .DS_Store
    images = np.concatenate([archive[f"{s}_images"] for s in SPLITS])
    targets = np.concatenate([archive[f"{s}_labels"].reshape(-1) for s in SPLITS])
    places = [(s, i) for s in SPLITS for i in range(len(archive[f"{s}_labels"]))]
    owner, correlation = match(images, sources)
    written = {split: [] for split in SPLITS}
    counts = {"matched": 0, "below_correlation": 0, "class_disagrees": 0}
    for (split, index), image, target, source, r in zip(places, images, targets, owner, correlation, strict=True):
        name = source_name(sources[source], int(target), split, index) if r >= MIN_CORRELATION else None
        counts["matched" if name else "below_correlation" if r < MIN_CORRELATION else "class_disagrees"] += 1
        folder = args.out / "train" / NAMES[int(target)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(folder / (name or f"{split}_{index:05d}.png"))
        written[split].append(sources[source].name if name else None)
    claimed = [n for split in SPLITS for n in written[split] if n]
    patients = {(labels.patient_series(n), labels.patient_id(n)) for n in claimed}
    summary = {
        "command": shlex.join(["python", "bench/pneumoniamnist_sources.py", *(sys.argv[1:] if argv is None else argv)]),
        "images": len(images), "sources": len(sources), **counts,
        "sources_claimed_twice_or_more": len(claimed) - len(set(claimed)),
        "patients": len(patients),
        "correlation_quantiles": dict(zip(("min", "p01", "p05", "median"),
                                          np.round(np.quantile(correlation, [0, 0.01, 0.05, 0.5]), 4).tolist(),
                                          strict=True)),
        "min_correlation": MIN_CORRELATION, "seconds": round(time.perf_counter() - started, 1),
        "source_of": written,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary))
    print(json.dumps({k: v for k, v in summary.items() if k != "source_of"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
