"""`cxr deid FILE`: what ingest keeps of one DICOM file and what it removes, before anything is uploaded.

Values of removed attributes are never printed (they are the identifiers); the pseudonyms are keyed
by the deployment's secret, which this command does not read, so it names them instead of computing them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cxr.errors import UserError
from lambdas.domain import deid, dicom, imaging, uploads

PSEUDONYM = "keyed pseudonym (HMAC-SHA-256 with the deployment's secret)"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "deid", help="show what ingest keeps and removes of a DICOM file",
        description="Print the de-identified facts ingest keeps of one DICOM file (PS3.15 Annex E Basic "
                    "Profile with Retain Patient Characteristics) and every attribute it removes, without values. "
                    "Exit status 0 when ingest would accept the file, 1 when it would reject it.")
    parser.add_argument("file", type=Path, metavar="FILE")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def describe(path: Path) -> dict:
    """The file's verdict, the facts kept (pseudonyms named, not computed) and the attributes removed."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not uploads.is_dicom(data):
        raise UserError(f"{path} is not a DICOM file")
    try:
        dataset = dicom.read(data)
    except imaging.RejectedImage as exc:
        raise UserError(f"{path}: {exc.message}") from None
    verdict = {"status": "accepted", "code": None, "reason": None}
    try:
        dicom.decode(data)
    except imaging.RejectedImage as exc:
        verdict = {"status": "rejected", "code": exc.code, "reason": exc.message}
    kept = deid.facts(dataset, key=bytes(32))
    for name in ("patient_id", "study_uid", "series_uid", "instance_uid"):
        kept[name] = PSEUDONYM if kept[name] else None
    return {"path": str(path), **verdict, "kept": kept, "removed": deid.removed(dataset)}


def run(args) -> int:
    report = describe(args.file)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(f"{report['path']}: {report['status']}" + (f" ({report['code']}: {report['reason']})"
                                                        if report["code"] else ""))
        print("kept (in the sidecar beside the processed image):")
        for name, value in report["kept"].items():
            print(f"  {name:<22}{'-' if value is None else value}")
        print(f"removed ({len(report['removed'])} attributes, values not shown; the original stays in raw/):")
        for element in report["removed"]:
            print(f"  {element['tag']}  {element['keyword']}  {element['vr']}")
    return 0 if report["status"] == "accepted" else 1
