"""`cxr import-medmnist FILE.npz --out DIR`: a MedMNIST npz as a Kaggle-layout folder of PNGs.

Writes ``DIR/<split>/<LABEL>/<split>_<index>.png`` for every split present in the file
(``train``, ``val``, ``test``), so ``cxr train-local --data DIR`` and ``cxr upload-dataset`` take
it like any other labelled folder. Label names come from ``--labels`` or, for PneumoniaMNIST,
from MedMNIST's own label table; multi-label datasets (ChestMNIST) have no single folder per
image and are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cxr.errors import UsageError

KNOWN_LABELS = {"pneumoniamnist": ["NORMAL", "PNEUMONIA"]}
SPLITS = ("train", "val", "test")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import-medmnist",
        help="write a MedMNIST .npz as folder-per-label PNGs",
        description="Write every split of a MedMNIST .npz as <out>/<split>/<LABEL>/<split>_<index>.png.",
    )
    parser.add_argument("npz", type=Path, metavar="FILE.npz")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--labels", help="comma-separated folder names for label 0, 1, ... (default: known table)")
    parser.set_defaults(run=run)


def label_names(npz_path: Path, override: str | None, n_labels: int) -> list[str]:
    if override:
        names = [n.strip() for n in override.split(",") if n.strip()]
    else:
        stem = npz_path.name.split("_")[0].split(".")[0].lower()
        names = KNOWN_LABELS.get(stem, [f"class_{k}" for k in range(n_labels)])
    if len(names) < n_labels:
        raise UsageError(f"{n_labels} labels in the file but only {len(names)} names: {names}")
    return names


def run(args) -> int:
    if not args.npz.is_file():
        raise UsageError(f"no such file: {args.npz}")
    try:
        archive = np.load(args.npz)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{args.npz} is not a readable .npz file: {exc}") from None
    present = [s for s in SPLITS if f"{s}_images" in archive.files and f"{s}_labels" in archive.files]
    if not present:
        raise UsageError(f"{args.npz} has none of {[s + '_images' for s in SPLITS]}")
    all_labels = [archive[f"{s}_labels"] for s in present]
    if any(lab.ndim > 1 and lab.shape[1] > 1 for lab in all_labels):
        raise UsageError("multi-label MedMNIST files have no single label folder per image")
    names = label_names(args.npz, args.labels, int(max(int(lab.max()) for lab in all_labels)) + 1)
    for split in present:
        images, targets = archive[f"{split}_images"], archive[f"{split}_labels"].reshape(-1)
        for name in {names[int(t)] for t in targets}:
            (args.out / split / name).mkdir(parents=True, exist_ok=True)
        for index, (image, target) in enumerate(zip(images, targets, strict=True)):
            Image.fromarray(np.asarray(image, dtype=np.uint8)).save(
                args.out / split / names[int(target)] / f"{split}_{index:05d}.png")
        counts = {names[k]: int((targets == k).sum()) for k in sorted(set(targets.tolist()))}
        print(f"{split}: {len(targets)} images {counts}")
    print(f"written to {args.out}")
    return 0
