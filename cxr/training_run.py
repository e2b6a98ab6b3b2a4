"""Local training under SageMaker's contract: channel directories in, a model directory out.

Two pieces the local mode reuses:

* :func:`stage_dataset` turns a local folder (Kaggle layout or folder-per-label) into the exact
  channel layout a ``ManifestFile`` channel produces on SageMaker, through the same normaliser and
  the same split rules (and manifest records) as ingest and PrepareDataset;
* :func:`run_training_job` runs ``train.py`` as a subprocess from a staged copy of the sourcedir
  with the ``SM_*`` environment SageMaker sets, and :func:`pack_model` makes ``model.tar.gz``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cxr import operations
from infra import packaging
from lambdas.domain import imaging, labels, layout, manifests, splits, uploads

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


@dataclass(frozen=True)
class StagedDataset:
    channels: dict[str, Path]
    classes: list[str]
    summary: dict
    median_side: int


def _normalise_file(path: Path) -> tuple[str, bytes | None, str | None, tuple[int, int]]:
    try:
        image, _ = uploads.normalise(path.read_bytes())
    except imaging.RejectedImage as exc:
        return str(path), None, exc.code, (0, 0)
    return str(path), image.png, image.content_hash, (image.width, image.height)


def iter_images(data_dir: Path) -> list[Path]:
    """The visible PNG, JPEG and DICOM files under ``data_dir``, sorted."""
    return [p for p in operations.dataset_files(data_dir) if p.suffix.lower() in IMAGE_SUFFIXES]


def stage_dataset(data_dir: Path, work_dir: Path, run_id: str = "local", validation_fraction: float = 0.15,
                  test_fraction: float = 0.15, seed: int = 0, workers: int | None = None,
                  log: Callable[[str], None] = print) -> StagedDataset:
    """Normalise, label and split ``data_dir``; write ``work_dir/channels/<split>/`` as SageMaker would."""
    data_dir, work_dir = Path(data_dir), Path(work_dir)
    dataset = data_dir.resolve().name
    if dataset.lower() in labels.SPLITS:  # kermany-224/train: name the dataset, not the split
        dataset = data_dir.resolve().parent.name
    files = iter_images(data_dir)
    if not files:
        raise FileNotFoundError(f"no PNG or JPEG images under {data_dir}")
    infos = {}
    for path in files:
        try:
            infos[str(path)] = labels.describe(path.relative_to(data_dir).parts[-3:])
        except labels.UnlabelledError as exc:
            log(f"skipped {path}: {exc}")
    stored_root = work_dir / "stored"
    items, sides, rejected, seen = [], [], 0, set()
    with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for name, png, content_hash, size in pool.map(_normalise_file, [Path(p) for p in infos], chunksize=32):
            if png is None:
                rejected += 1
                log(f"rejected {name}: {content_hash}")
                continue
            info = infos[name]
            key = layout.processed_key(dataset, info.label, content_hash[:32])
            if key in seen:  # identical pixels under one label: one image, as ingest stores it
                continue
            seen.add(key)
            target = stored_root / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(png)
            items.append(splits.Item(key, info.label, info.patient_id, content_hash, info.split))
            sides.append(max(size))
    classes = labels.class_set({i.label for i in items})
    items = [splits.Item(i.key, labels.training_label(i.label, classes), i.patient_id, i.content_hash, i.user_split)
             for i in items]
    result = splits.split_items(items, validation_fraction, test_fraction, seed)
    channels = {name: write_channel(stored_root, work_dir / "channels" / name, members, dataset, run_id, name)
                for name, members in result.splits.items() if members}
    summary = manifests.build_summary(result, dataset, run_id, classes, {
        "validation_fraction": validation_fraction, "test_fraction": test_fraction, "seed": seed})
    summary["rejected"] = rejected
    (work_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    sides.sort()
    return StagedDataset(channels, classes, summary, sides[len(sides) // 2] if sides else 0)


def write_channel(stored_root: Path, channel: Path, members: list[splits.Item], dataset: str, run_id: str,
                  name: str) -> Path:
    """One split as a ``ManifestFile`` channel lands: ``<channel>/<relative key>`` (hard links) and its manifest."""
    shutil.rmtree(channel, ignore_errors=True)
    for item in members:
        (channel / item.key).parent.mkdir(parents=True, exist_ok=True)
        os.link(stored_root / item.key, channel / item.key)
    manifest = channel / manifests.jsonl_key(run_id, name)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("".join(json.dumps(r, sort_keys=True) + "\n"
                                for r in manifests.manifest_records(members, dataset)))
    return channel


def hyperparameter_flags(hyperparameters: dict) -> list[str]:
    """``{"image-size": 224}`` -> ``["--image-size", "224"]``, as SageMaker passes them."""
    flags = []
    for key, value in hyperparameters.items():
        flags += [f"--{key}", str(value)]
    return flags


def pretrained_channel(folder: Path) -> Path | None:
    """The pipeline's ``pretrained`` channel (every network's ImageNet weights, the zip it ships), linked
    into ``folder/pretrained``; None where no weights are installed."""
    weights = packaging.pretrained_bundle()
    if weights is None:
        return None
    channel = Path(folder) / "pretrained"
    channel.mkdir(parents=True, exist_ok=True)
    link = channel / weights.name
    if not link.exists():
        link.symlink_to(weights)
    return channel


def run_training_job(channels: dict[str, Path], hyperparameters: dict, out_dir: Path,
                     sourcedir: Path | None = None, checkpoint_dir: Path | None = None,
                     stream=None, on_start: Callable[[subprocess.Popen], None] | None = None) -> Path:
    """Run ``train.py`` as SageMaker would; returns the model directory (raises if the job failed).

    ``sourcedir`` may be a ``sourcedir.tar.gz`` (the very archive the cloud job gets) or None to
    stage ``training_job/`` directly; its wheels are not installed here, the local environment has them.
    """
    out_dir = Path(out_dir).resolve()  # train.py runs from its code folder: every path must be absolute
    channels = {name: Path(path).resolve() for name, path in channels.items()}
    code = out_dir / "code"
    shutil.rmtree(code, ignore_errors=True)
    if sourcedir is None:
        packaging.stage_sources(code)
    else:
        with tarfile.open(sourcedir) as archive:
            archive.extractall(code, filter="data")
    model_dir, output_dir = out_dir / "model", out_dir / "output" / "data"
    checkpoint_dir = Path(checkpoint_dir or out_dir / "checkpoints").resolve()
    for folder in (model_dir, output_dir, checkpoint_dir):
        folder.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "SM_MODEL_DIR": str(model_dir),
        "SM_OUTPUT_DATA_DIR": str(output_dir),
        "SM_CHECKPOINT_DIR": str(checkpoint_dir),
        "SM_HPS": json.dumps(hyperparameters),
        "SM_CURRENT_HOST": "algo-1",
        "SM_HOSTS": json.dumps(["algo-1"]),
        "SM_NUM_GPUS": "0",
        "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "SM_CHANNELS": json.dumps(sorted(channels)),
        "PYTHONUNBUFFERED": "1",
        **{f"SM_CHANNEL_{name.upper()}": str(path) for name, path in channels.items()},
        **{f"SM_HP_{key.upper().replace('-', '_')}": str(value) for key, value in hyperparameters.items()},
    }
    cmd = [sys.executable, "train.py", *hyperparameter_flags(hyperparameters)]
    with (out_dir / "train.log").open("w", buffering=1) as log:
        process = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        if on_start is not None:  # the offline cloud keeps it to stop the job as StopTrainingJob does (SIGTERM)
            on_start(process)
        for line in process.stdout:
            log.write(line)
            if stream is not None:
                stream.write(line)
                stream.flush()
        if process.wait() != 0:
            raise RuntimeError(f"train.py exited with status {process.returncode}; see {out_dir / 'train.log'}")
    return model_dir


def pack_model(model_dir: Path, archive: Path) -> Path:
    """``model.tar.gz`` as SageMaker uploads it: the model directory's contents at the archive root.

    gzip's fastest level: the artifact is mostly the serving copy's compiled libraries, which level 9 packs only
    12 % smaller (54 against 61 MB) in almost seven times the time (22.7 against 3.4 s on a 2-core AMD EPYC)."""
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for path in sorted(Path(model_dir).rglob("*")):
            tar.add(path, arcname=path.relative_to(model_dir).as_posix(), recursive=False)
    return archive
