"""bench/pneumoniamnist_sources.py: 28 px images matched back to the Kermany-named files they were made from."""

from __future__ import annotations

import importlib
import json

import numpy as np
from PIL import Image

from lambdas.domain import labels


def _chest(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random picture (distinct low frequencies, as X-rays have) with fine noise on top."""
    coarse = rng.uniform(0, 255, (6, 6)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float64)
    return np.clip(smooth + rng.normal(0, 4, smooth.shape), 0, 255).astype(np.uint8)


def _medmnist(image: np.ndarray) -> np.ndarray:
    """MedMNIST's recipe: the centre square on the short side, resized to 28 px."""
    height, width = image.shape
    side = min(width, height)
    box = ((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2)
    return np.asarray(Image.fromarray(image).resize((28, 28), Image.BICUBIC, box=box))


def test_each_image_is_named_after_its_source_and_mismatches_stay_anonymous(tmp_path):
    bench = importlib.import_module("bench.pneumoniamnist_sources")
    rng = np.random.default_rng(0)
    full = tmp_path / "full"
    squashed = tmp_path / "squashed" / "NORMAL"
    full.mkdir()
    squashed.mkdir(parents=True)
    sources = {  # name: (picture at its own size, label of the MedMNIST copy)
        "IM-0115-0001.jpeg": (_chest(rng, 150, 100), 0),
        "NORMAL2-IM-0383-0001.jpeg": (_chest(rng, 120, 110), 0),
        "person12_bacteria_40.jpeg": (_chest(rng, 140, 100), 1),
        "person13_virus_44.jpeg": (_chest(rng, 100, 130), 0),  # labelled normal: the classes disagree
    }
    made = []
    for name, (picture, label) in sources.items():
        made.append((_medmnist(picture), label))
        if name.startswith("IM-"):  # kept only as a 224 px square, its aspect lost, as kermany-224 is
            Image.fromarray(picture).resize((224, 224), Image.BICUBIC).save(squashed / name, quality=95)
        else:
            Image.fromarray(picture).save(full / name, quality=95)
    made.append((_medmnist(_chest(rng, 120, 120)), 1))  # from no source at hand
    images = np.stack([m for m, _ in made])
    targets = np.array([[t] for _, t in made])
    npz = tmp_path / "pm.npz"
    np.savez(npz, train_images=images[:3], train_labels=targets[:3], val_images=images[3:], val_labels=targets[3:])
    out, report = tmp_path / "named", tmp_path / "sources.json"

    bench.main(["--npz", str(npz), "--source", str(tmp_path / "squashed"), "--source", str(full),
                "--out", str(out), "--json", str(report)])

    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["train/NORMAL/IM-0115-0001-train_00000.png", "train/NORMAL/NORMAL2-IM-0383-0001-train_00001.png",
                       "train/NORMAL/val_00000.png", "train/PNEUMONIA/person12_train_00002.png",
                       "train/PNEUMONIA/val_00001.png"]
    summary = json.loads(report.read_text())
    assert (summary["matched"], summary["class_disagrees"], summary["below_correlation"]) == (3, 1, 1)
    assert summary["source_of"]["train"] == ["IM-0115-0001.jpeg", "NORMAL2-IM-0383-0001.jpeg",
                                             "person12_bacteria_40.jpeg"]
    # the pixels are MedMNIST's, and the names give the patient and its numbering, not the sub-type
    assert np.array_equal(np.asarray(Image.open(out / "train/PNEUMONIA/person12_train_00002.png")), images[2])
    assert labels.label_for_file("PNEUMONIA", "person12_train_00002.png") == labels.PNEUMONIA
    assert [labels.patient_series(n) for n in ("IM-0115-0001-train_00000.png", "person12_train_00002.png")] == [
        "IM-", "person"]
