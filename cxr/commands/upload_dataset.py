"""`cxr upload-dataset DIR | --manifest CSV`: validate with the ingest rules, then upload in parallel, resumably."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from cxr import manifest, operations, progress, target
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
    accepted, rejected, found = [], [], set()
    with progress.bar(len(files), "checking") as bar:  # one pass: verdict, then the digest of what is accepted
        for path in files:
            key = prefix + path.relative_to(folder).as_posix()
            verdict = check.check_file(path, key.split("/")[2:])  # as ingest will label it
            if verdict.status == "accepted":
                accepted.append(local_item(key, path))
                found.add(verdict.label)
            else:
                rejected.append(verdict)
            bar.update()
    if not accepted:
        if all(v.code == "unlabelled" for v in rejected):
            raise UserError(f"{folder} has no recognisable labels: put images in label folders such as "
                            "NORMAL/ and PNEUMONIA/ (optionally under train/ val/ test/)")
        raise UserError(f"none of the {len(files)} files in {folder} is an acceptable X-ray (see `cxr check`)")
    classes = labels.class_set(found)
    print(f"{len(files)} files: {len(accepted)} valid ({', '.join(sorted(found))}; a training run would use "
          f"{len(classes)} classes), {len(rejected)} rejected locally and not uploaded")
    for v in rejected:
        print(f"  skipped {v.path}: {v.code}: {v.reason}")
    deployment = target.resolve(args)
    s3, bucket = deployment.client("s3"), deployment.bucket(wiring.DATA)
    return send(args, s3, bucket, prefix, accepted, dataset)


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
    items = [replace(s3_item(s3, key, entry) if entry.in_s3 else local_item(key, Path(entry.source)),
                     metadata={layout.PATIENT_METADATA: entry.patient_id} if entry.patient_id else {})
             for entry, key in planned.items()]
    print(f"{args.manifest}: {len(keys)} images ({len(keys) - len(local)} in S3, {len(local)} local, "
          f"{len(rejected)} rejected locally)")
    return send(args, s3, bucket, f"{layout.RAW}{dataset}/", items, dataset)


@dataclass(frozen=True, slots=True)
class Item:
    """One object to send to ``key``: a local file, or an S3 object copied inside S3."""

    key: str
    source: Path | str
    """A local ``Path``, or an ``s3://bucket/key`` URI."""
    size: int
    fingerprint: str
    """What proves the object at ``key`` holds this source: a file's SHA-256 (base64, as S3 reports
    ``ChecksumSHA256``), or an S3 source's ETag, which the copy records in its metadata."""
    metadata: dict[str, str] = field(default_factory=dict)
    """User metadata the object gets (a manifest's ``patient_id``)."""


SOURCE_ETAG = "cxr-source-etag"
"""User metadata of a copied object: the ETag of the source object version it was copied from."""


def local_item(key: str, path: Path) -> Item:
    data = path.read_bytes()
    return Item(key, path, len(data), operations.sha256_base64(data))


def s3_item(s3, key: str, entry: manifest.Entry) -> Item:
    """The source object's size and ETag; a missing or unreadable source stops everything first."""
    source_bucket, source_key = entry.bucket_and_key()
    try:
        head = s3.head_object(Bucket=source_bucket, Key=source_key)
    except s3.exceptions.ClientError as error:
        raise UserError(f"line {entry.line}: cannot read {entry.source}: "
                        f"{error.response['Error'].get('Message') or error.response['Error']['Code']}") from None
    return Item(key, entry.source, head["ContentLength"], head["ETag"].strip('"'))


def send(args, s3, bucket: str, prefix: str, items: list[Item], dataset: str) -> int:
    """Send each item unless the object at its key holds it already (resumable), or list what would be
    sent (``--dry-run``). A local ``Path`` is uploaded with its SHA-256; an ``s3://`` source is copied
    inside S3 and the copy records the source's ETag (:data:`SOURCE_ETAG`)."""
    there = already_there(s3, bucket, prefix, items, args.workers)
    todo = [item for item in items if item.key not in there]
    print(f"s3://{bucket}/{prefix}: {len(items) - len(todo)} already there with the same checksum, "
          f"{len(todo)} to send")
    if args.dry_run:
        for item in todo:
            print(f"  would {'upload' if isinstance(item.source, Path) else 'copy'} {item.source} -> {item.key}")
        return 0
    for item in todo:
        if not isinstance(item.source, Path):
            source_bucket, source_key = layout.split_s3_uri(item.source)
            s3.copy_object(Bucket=bucket, Key=item.key, CopySource={"Bucket": source_bucket, "Key": source_key},
                           Metadata={SOURCE_ETAG: item.fingerprint, **item.metadata}, MetadataDirective="REPLACE")
    files = [(item.source, item.key) for item in todo if isinstance(item.source, Path)]
    with progress.bar(len(files), "uploading") as bar:
        operations.upload_files(s3, bucket, files, args.workers, lambda done, total: bar.update(),
                                metadata={i.key: i.metadata for i in todo if i.metadata})
    print(f"sent {len(todo)} files; each is preprocessed by the ingest Lambda "
          f"(see processed/{dataset}/ and quarantine/)")
    return 0


def already_there(s3, bucket: str, prefix: str, items: list[Item], workers: int) -> set[str]:
    """Keys whose object already holds its item, judged without ETags: under SSE-KMS (the data bucket's
    encryption) S3's ETag is not the MD5 of the data, nor is a copy's ETag its source's.

    One listing gives the keys and sizes there; each key of the right size gets a ``HeadObject`` with
    ``ChecksumMode=ENABLED`` (ListObjectsV2 names a checksum's algorithm, never its value): a file
    matches the object's full-object ``ChecksumSHA256``, a copy its :data:`SOURCE_ETAG`. A composite
    checksum (``<digest>-<parts>``, from a multipart upload by another tool) is a digest of part
    digests, not of the file, so such an object is sent again and then holds a full-object one.
    Reading a checksum of an SSE-KMS object needs ``kms:Decrypt`` on its key (HeadObject).
    """
    candidates = same_size(listed(s3, bucket, prefix), items)

    def holds(item: Item) -> bool:
        head = s3.head_object(Bucket=bucket, Key=item.key, ChecksumMode="ENABLED")
        if isinstance(item.source, Path):
            full_object = head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT"
            return full_object and head.get("ChecksumSHA256") == item.fingerprint
        return head.get("Metadata", {}).get(SOURCE_ETAG) == item.fingerprint

    held = set()
    with ThreadPoolExecutor(max(1, workers)) as pool, progress.bar(len(candidates), "comparing checksums") as bar:
        for item, ok in zip(candidates, operations.bounded_map(pool, holds, candidates, 4 * max(1, workers)),
                            strict=True):
            if ok:
                held.add(item.key)
            bar.update()
    return held


def listed(s3, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
    """(key, size) of every object under ``prefix``, page by page, in S3's order: ascending UTF-8 bytes
    ("Listing object keys programmatically", Amazon S3 User Guide), which is Python's order of ``str``."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"], obj["Size"]


def same_size(listing: Iterator[tuple[str, int]], items: list[Item]) -> list[Item]:
    """The items whose key is listed with their size: one merge of two sorted sequences, so the listing (200,000
    keys at scale) streams past instead of being held beside the items."""
    candidates, previous = [], ""
    ordered = iter(sorted(items, key=lambda item: item.key))
    item = next(ordered, None)
    for key, size in listing:
        if key < previous:
            raise RuntimeError(f"the listing is out of order at {key!r}: S3 lists keys in ascending order")
        previous = key
        while item is not None and item.key <= key:
            if item.key == key and item.size == size:
                candidates.append(item)
            item = next(ordered, None)
    return candidates


def dataset_name(folder: Path) -> str:
    """The folder's name, or its parent's when the folder is itself a split (``chest_xray/train``)."""
    resolved = folder.resolve()
    return resolved.parent.name if resolved.name.lower() in labels.SPLITS else resolved.name


def key_prefix(folder: Path, dataset: str) -> str:
    """``raw/<dataset>/``, keeping a split folder given as DIR (``.../train``) in the keys."""
    split = folder.resolve().name if folder.resolve().name.lower() in labels.SPLITS else None
    return f"{layout.RAW}{dataset}/" + (f"{split}/" if split else "")
