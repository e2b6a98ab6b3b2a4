"""CSV import manifests in the form AutoML Vision imports: one ``[set,]uri,label[,patient_id]`` row per image.

Each row becomes the key ingest already reads, ``raw/<dataset>/[train|val|test/]<label>/<file>``,
so labels, patient ids and splits follow the folder rules of ARCHITECTURE.md ("Labels") and
nothing downstream needs to know a manifest was used. ``uri`` is ``s3://bucket/key`` (copied
inside S3, never moved) or a local path, relative to the manifest's folder. The optional ``patient_id``
column (four fields: ``set,uri,label,patient_id``, the set may be empty) travels as the object's user
metadata (``layout.PATIENT_METADATA``); ingest keeps only its keyed pseudonym and groups splits by it.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cxr.errors import UserError
from lambdas.domain import labels, layout

SETS = {"train": "train", "validation": "val", "test": "test", "unassigned": None, "": None}
"""AutoML's set column (case-insensitive) -> our split folder; unassigned rows are split by patient."""
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
MAX_ERRORS_SHOWN = 10
PATIENT_ID_MAX = 64
"""A patient id travels as S3 user metadata: ASCII (non-ASCII would need encoding), short as DICOM's LO."""


@dataclass(frozen=True)
class Entry:
    line: int
    source: str
    """``s3://bucket/key`` or an absolute local path."""
    split: str | None
    label: str
    patient_id: str | None = None

    @property
    def in_s3(self) -> bool:
        return self.source.startswith("s3://")

    def bucket_and_key(self) -> tuple[str, str]:
        return layout.split_s3_uri(self.source)


def read(path: Path) -> list[Entry]:
    """Every row, checked; raises one error naming each bad line (so nothing is uploaded)."""
    entries, errors, seen = [], [], {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for line, row in enumerate(csv.reader(handle), 1):
            row = [cell.strip() for cell in row]
            if not any(row) or row[0].startswith("#") or (line == 1 and row[-1].lower() in ("label", "patient_id")):
                continue  # blank, comment, or a header row (``set,uri,label[,patient_id]``)
            try:
                entry = _entry(line, row, path.parent)
            except ValueError as error:
                errors.append(f"line {line}: {error}")
                continue
            if entry.source in seen:  # a repeated row is harmless; a contradicting one is not
                if seen[entry.source] != (entry.split, entry.label, entry.patient_id):
                    errors.append(f"line {line}: {entry.source} is listed again with another set or label "
                                  "or patient id")
                continue
            seen[entry.source] = (entry.split, entry.label, entry.patient_id)
            entries.append(entry)
    if errors:
        shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise UserError(f"{path}: {len(errors)} bad rows, nothing uploaded:\n  {shown}{more}")
    if not entries:
        raise UserError(f"{path} lists no images (expected rows of [set,]uri,label)")
    return entries


def _entry(line: int, row: list[str], base: Path) -> Entry:
    if len(row) == 2:
        row = ["", *row]
    if len(row) == 3:
        row = [*row, ""]
    if len(row) != 4:
        raise ValueError(f"expected [set,]uri,label[,patient_id], got {len(row)} fields")
    split_name, uri, label, patient = row
    if len(patient) > PATIENT_ID_MAX or not patient.isprintable() or not patient.isascii():
        raise ValueError(f"patient_id must be printable ASCII of at most {PATIENT_ID_MAX} characters")
    if split_name.lower() not in SETS:
        raise ValueError(f"set {split_name!r} is not one of TRAIN, VALIDATION, TEST, UNASSIGNED")
    if not LABEL.match(label) or label.lower() in labels.SPLITS:
        raise ValueError(f"label {label!r} must be letters, digits, '_' or '-' and not a split name")
    if uri.startswith("s3://"):
        _, key = layout.split_s3_uri(uri)  # a URI without a bucket raises here, naming it
        if not key or key.endswith("/"):
            raise ValueError(f"{uri!r} is not an s3://bucket/key of one object")
        source = uri
    elif "://" in uri:
        raise ValueError(f"{uri!r}: only s3:// URIs and local paths are read")
    else:
        path = (base / uri).resolve()
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        source = str(path)
    return Entry(line, source, SETS[split_name.lower()], label, patient or None)


def plan(entries: list[Entry], dataset: str) -> dict[Entry, str]:
    """The raw key of each entry; files that share a name in one label folder get a suffix from their source."""
    keys, taken = {}, {}
    for entry in entries:
        name = PurePosixPath(entry.source).name
        folder = f"{layout.RAW}{dataset}/" + (f"{entry.split}/" if entry.split else "") + f"{entry.label}/"
        if taken.setdefault(folder + name, entry.source) != entry.source:
            stem, suffix = PurePosixPath(name).stem, PurePosixPath(name).suffix
            name = f"{stem}-{hashlib.sha256(entry.source.encode()).hexdigest()[:8]}{suffix}"
        keys[entry] = folder + name
    return keys
