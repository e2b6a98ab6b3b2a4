"""`cxr upload-dataset DIR | --manifest CSV`: validate with the ingest rules, then upload in parallel, resumably."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from cxr import manifest, operations, target
from cxr.commands import check
from cxr.errors import UsageError, UserError
from infra import wiring
from lambdas.domain import labels, layout


def register(subparsers) -> None:
    parser = subparsers.add_parser("upload-dataset", help="upload a labelled folder of X-rays to the data bucket",
                                   description=__doc__.splitlines()[0] + " DIR is the Kaggle layout "
                                   "(train|val|test/<LABEL>/...) or any folder-per-label tree; or a CSV "
                                   "manifest of [set,]uri,label rows as AutoML Vision imports (uri: s3://bucket/key, "
                                   "copied inside S3, or a path relative to the CSV).")
    parser.add_argument("folder", type=Path, metavar="DIR", nargs="?")
    parser.add_argument("--manifest", type=Path, metavar="FILE.csv", help="a CSV manifest instead of DIR")
    parser.add_argument("--dataset", default=None,
                        help="dataset name (default: the folder's name, or the manifest's file name)")
    parser.add_argument("--workers", type=int, default=8, help="parallel uploads")
    parser.add_argument("--dry-run", action="store_true", help="validate and list what would be uploaded")
    target.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    if (args.folder is None) == (args.manifest is None):
        raise UsageError("give either a folder DIR or --manifest FILE.csv")
    if args.manifest is not None:
        return upload_manifest(args)
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
    return send(args, s3, bucket, prefix, [(keys[path], path, md5_hex(path)) for path, _ in accepted], dataset)


def upload_manifest(args) -> int:
    """Local files are checked and uploaded as a folder's are; S3 objects are copied to their raw key,
    where ingest judges them (and quarantines with a reason) like any upload."""
    if not args.manifest.is_file():
        raise UsageError(f"no such manifest: {args.manifest}")
    dataset = args.dataset or args.manifest.stem
    keys = manifest.plan(manifest.read(args.manifest), dataset)
    local = [entry for entry in keys if not entry.in_s3]
    verdicts = {entry: check.check_file(Path(entry.source), keys[entry].split("/")[2:]) for entry in local}
    rejected = {entry: v for entry, v in verdicts.items() if v.status != "accepted"}
    for entry, v in rejected.items():
        print(f"  skipped line {entry.line} {entry.source}: {v.code}: {v.reason}")
    planned = {entry: key for entry, key in keys.items() if entry not in rejected}
    if not planned:
        raise UserError(f"none of the {len(keys)} images in {args.manifest} is an acceptable X-ray")
    deployment = target.resolve(args)
    s3, bucket = deployment.client("s3"), deployment.bucket(wiring.DATA)
    items = [(key, entry.source, source_etag(s3, entry)) if entry.in_s3 else
             (key, Path(entry.source), md5_hex(Path(entry.source))) for entry, key in planned.items()]
    print(f"{args.manifest}: {len(keys)} images ({len(keys) - len(local)} in S3, {len(local)} local, "
          f"{len(rejected)} rejected locally)")
    return send(args, s3, bucket, f"{layout.RAW}{dataset}/", items, dataset)


def send(args, s3, bucket: str, prefix: str, items: list[tuple[str, Path | str, str]], dataset: str) -> int:
    """Send each ``(raw key, source, checksum)`` unless an object with that checksum is there already
    (resumable), or list what would be sent (``--dry-run``). A local ``Path`` is uploaded; an
    ``s3://`` source is copied inside S3, its checksum being its ETag, which a copy keeps."""
    existing = remote_checksums(s3, bucket, prefix)
    todo = [(key, source) for key, source, checksum in items if existing.get(key) != checksum]
    print(f"s3://{bucket}/{prefix}: {len(items) - len(todo)} already there with the same checksum, "
          f"{len(todo)} to send")
    if args.dry_run:
        for key, source in todo:
            print(f"  would {'upload' if isinstance(source, Path) else 'copy'} {source} -> {key}")
        return 0
    for key, source in todo:
        if not isinstance(source, Path):
            source_bucket, source_key = layout.split_s3_uri(source)
            s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": source_bucket, "Key": source_key})
    operations.upload_files(s3, bucket, [(source, key) for key, source in todo if isinstance(source, Path)],
                            args.workers, progress_bar)
    print(f"sent {len(todo)} files; each is preprocessed by the ingest Lambda "
          f"(see processed/{dataset}/ and quarantine/)")
    return 0


def source_etag(s3, entry: manifest.Entry) -> str:
    """The source object's ETag, which a copy keeps; a missing or unreadable source stops everything first."""
    source_bucket, source_key = entry.bucket_and_key()
    try:
        return s3.head_object(Bucket=source_bucket, Key=source_key)["ETag"].strip('"')
    except s3.exceptions.ClientError as error:
        raise UserError(f"line {entry.line}: cannot read {entry.source}: "
                        f"{error.response['Error'].get('Message') or error.response['Error']['Code']}") from None


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
