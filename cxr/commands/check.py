"""`cxr check PATH...`: the ingest normaliser and label rules, run on local files before any upload."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from cxr.errors import UsageError
from lambdas.domain import imaging, labels, uploads


@dataclass
class Verdict:
    path: str
    status: str
    label: str | None = None
    patient_id: str | None = None
    reason: str | None = None
    code: str | None = None
    width: int | None = None
    height: int | None = None
    original_size: str | None = None
    original_format: str | None = None


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check",
        help="validate X-ray files and folders with the ingest rules",
        description="Run the ingest normaliser and label rules on local files and folders. "
        "Exit status 0 when every file was accepted, 1 when any was rejected, 2 on a usage error.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", type=Path, help="files or folders (searched recursively)")
    parser.add_argument("--json", action="store_true", help="print one JSON array with a record per file")
    parser.set_defaults(run=run)


def run(args) -> int:
    missing = [str(p) for p in args.paths if not os.path.lexists(p)]  # a dangling link or loop gets a verdict
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    verdicts = [entry if isinstance(entry, Verdict) else check_file(entry) for entry in walk(args.paths)]
    if not verdicts:
        raise UsageError("no files found under the given paths")
    if args.json:
        json.dump([asdict(v) for v in verdicts], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_table(verdicts)
    return 0 if all(v.status == "accepted" for v in verdicts) else 1


def walk(paths: list[Path]):
    """Files to check, in argument order, folders depth-first in sorted order, hidden entries skipped.

    Folder links are followed (a label folder is often a link to where the images live). What cannot
    be walked is a verdict of its own instead of a silent gap: a link loop, a dangling link, a folder
    or file that cannot be read.
    """
    stack = [(path, ()) for path in reversed(paths)]
    while stack:
        path, ancestors = stack.pop()
        try:
            info = path.stat()  # follows links
        except OSError as exc:
            yield _unwalkable(path, exc)
            continue
        if not stat.S_ISDIR(info.st_mode):
            yield path
            continue
        identity = (info.st_dev, info.st_ino)
        if identity in ancestors:
            yield _rejected(path, "symlink_loop", "a folder link that leads back to a folder above it (not followed)")
            continue
        try:
            with os.scandir(path) as entries:
                names = sorted(entry.name for entry in entries if not entry.name.startswith("."))
        except OSError as exc:
            yield _rejected(path, "unreadable", f"cannot list the folder ({exc.strerror or exc})")
            continue
        stack.extend((path / name, (*ancestors, identity)) for name in reversed(names))


def _unwalkable(path: Path, exc: OSError) -> Verdict:
    if exc.errno == errno.ELOOP:
        return _rejected(path, "symlink_loop", "the link leads round in a loop, to no file")
    if exc.errno == errno.ENOENT and path.is_symlink():
        return _rejected(path, "broken_symlink", f"the link points to {os.readlink(path)}, which does not exist")
    return _rejected(path, "unreadable", f"cannot read it ({exc.strerror or exc})")


def _rejected(path: Path, code: str, reason: str) -> Verdict:
    return Verdict(path=str(path), status="rejected", code=code, reason=reason)


def check_file(path: Path, key_parts: list[str] | None = None) -> Verdict:
    """The verdict ingest would give this file: label from its folders, then the normaliser.

    ``key_parts`` are the folders and name it will have under ``raw/<dataset>/`` (default: its own path,
    as given: a link is labelled by the folder it sits in, not by its target's).
    """
    verdict = Verdict(path=str(path), status="rejected")
    try:
        info = labels.describe(key_parts or Path(os.path.abspath(path)).parts[-3:])
        verdict.label, verdict.patient_id = info.label, info.patient_id
        imaging.check_upload_size(path.stat().st_size)
        image, _ = uploads.normalise(path.read_bytes())
    except labels.UnlabelledError as exc:
        verdict.code, verdict.reason = "unlabelled", str(exc)
    except imaging.RejectedImage as exc:
        verdict.code, verdict.reason = exc.code, exc.message
    except OSError as exc:
        verdict.code, verdict.reason = "unreadable", f"cannot read the file ({exc.strerror or exc})"
    else:
        verdict.status = "accepted"
        verdict.width, verdict.height = image.width, image.height
        verdict.original_size = f"{image.original_width}x{image.original_height}"
        verdict.original_format = image.original_format
    return verdict


def print_table(verdicts: list[Verdict]) -> None:
    width = min(60, max(len(v.path) for v in verdicts))
    print(f"{'file':<{width}}  {'verdict':<8}  {'label':<10}  {'patient':<8}  detail")
    for v in verdicts:
        path = v.path if len(v.path) <= width else "..." + v.path[-(width - 3):]
        if v.status == "accepted":
            detail = f"{v.original_format} {v.original_size} -> {v.width}x{v.height} PNG"
        else:
            detail = f"{v.code}: {v.reason}"
        print(f"{path:<{width}}  {v.status:<8}  {v.label or '-':<10}  {v.patient_id or '-':<8}  {detail}")
    accepted = sum(v.status == "accepted" for v in verdicts)
    by_label: dict[str, int] = {}
    for v in verdicts:
        if v.status == "accepted":
            by_label[v.label] = by_label.get(v.label, 0) + 1
    labels_text = ", ".join(f"{label} {n}" for label, n in sorted(by_label.items())) or "none"
    print(f"\n{len(verdicts)} files: {accepted} accepted ({labels_text}), {len(verdicts) - accepted} rejected")
