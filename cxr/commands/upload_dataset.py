"""`cxr upload-dataset DIR`: validate locally with the ingest rules, then upload in parallel, resumably."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from cxr import operations, target
from cxr.commands import check
from cxr.errors import UsageError, UserError
from infra import wiring
from lambdas.domain import labels, layout


def register(subparsers) -> None:
    parser = subparsers.add_parser("upload-dataset", help="upload a labelled folder of X-rays to the data bucket",
                                   description=__doc__.splitlines()[0] + " DIR is the Kaggle layout "
                                   "(train|val|test/<LABEL>/...) or any folder-per-label tree.")
    parser.add_argument("folder", type=Path, metavar="DIR")
    parser.add_argument("--dataset", default=None, help="dataset name (default: the folder's name)")
    parser.add_argument("--workers", type=int, default=8, help="parallel uploads")
    parser.add_argument("--dry-run", action="store_true", help="validate and list what would be uploaded")
    target.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    folder: Path = args.folder
    if not folder.is_dir():
        raise UsageError(f"not a folder: {folder}")
    dataset = args.dataset or dataset_name(folder)
    files = operations.dataset_files(folder)
    if not files:
        raise UserError(f"{folder} holds no files")
    prefix = key_prefix(folder, dataset)
    keys = {path: prefix + path.relative_to(folder).as_posix() for path in files}
    verdicts = [check.check_file(path, keys[path].split("/")[2:]) for path in files]  # as ingest will label it
    accepted = [(path, v) for path, v in zip(files, verdicts, strict=True) if v.status == "accepted"]
    if not accepted:
        unlabelled = sum(v.code == "unlabelled" for v in verdicts)
        if unlabelled == len(verdicts):
            raise UserError(f"{folder} has no recognisable labels: put images in label folders such as "
                            "NORMAL/ and PNEUMONIA/ (optionally under train/ val/ test/)")
        raise UserError(f"none of the {len(files)} files in {folder} is an acceptable X-ray (see `cxr check`)")
    found = sorted({v.label for _, v in accepted})
    classes = labels.class_set(found)
    print(f"{len(files)} files: {len(accepted)} valid ({', '.join(found)}; a training run would use "
          f"{len(classes)} classes), {len(files) - len(accepted)} rejected locally and not uploaded")
    for v in verdicts:
        if v.status != "accepted":
            print(f"  skipped {v.path}: {v.code}: {v.reason}")
    deployment = target.resolve(args)
    s3, bucket = deployment.client("s3"), deployment.bucket(wiring.DATA)
    existing = remote_checksums(s3, bucket, prefix)
    plan = [(path, keys[path]) for path, _ in accepted]
    todo = [(path, key) for path, key in plan if existing.get(key) != md5_hex(path)]
    print(f"s3://{bucket}/{prefix}: {len(plan) - len(todo)} already uploaded with the same checksum, "
          f"{len(todo)} to upload")
    if args.dry_run:
        for path, key in todo:
            print(f"  would upload {path} -> {key}")
        return 0
    operations.upload_files(s3, bucket, todo, args.workers, progress_bar)
    print(f"uploaded {len(todo)} files; each upload is preprocessed by the ingest Lambda "
          f"(see processed/{dataset}/ and quarantine/)")
    return 0


def dataset_name(folder: Path) -> str:
    """The folder's name, or its parent's when the folder is itself a split (``chest_xray/train``)."""
    resolved = folder.resolve()
    return resolved.parent.name if resolved.name.lower() in labels.SPLITS else resolved.name


def key_prefix(folder: Path, dataset: str) -> str:
    """``raw/<dataset>/``, keeping a split folder given as DIR (``.../train``) in the keys."""
    split = folder.resolve().name if folder.resolve().name.lower() in labels.SPLITS else None
    return f"{layout.RAW}{dataset}/" + (f"{split}/" if split else "")


def md5_hex(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def remote_checksums(s3, bucket: str, prefix: str) -> dict[str, str]:
    """Key -> MD5 of what is already there (a single-part upload's ETag is its MD5)."""
    paginator = s3.get_paginator("list_objects_v2")
    return {obj["Key"]: obj["ETag"].strip('"') for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])}


def progress_bar(done: int, total: int) -> None:
    filled = int(30 * done / total)
    end = "\n" if done == total else ""
    print(f"\r  [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", end=end, file=sys.stderr, flush=True)
