"""Auto-labelling from folder and file names, the way Rekognition Custom Labels reads folders.

Contract (ARCHITECTURE.md, "Labels"): the folder holding the file decides the label;
Kermany file names refine ``PNEUMONIA`` into ``bacterial`` / ``viral`` and give patient ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

NORMAL, BACTERIAL, VIRAL, PNEUMONIA = "normal", "bacterial", "viral", "pneumonia"
SUBTYPES = (BACTERIAL, VIRAL)
SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}

_FOLDER_LABELS = {
    "normal": NORMAL,
    "bacterial": BACTERIAL,
    "bacteria": BACTERIAL,
    "viral": VIRAL,
    "virus": VIRAL,
}
_PERSON = re.compile(r"person(\d+)_", re.IGNORECASE)
_KERMANY_NORMAL = re.compile(r"^(?:NORMAL2-)?IM-(\d{4})-\d{4}", re.IGNORECASE)


class UnlabelledError(ValueError):
    """The path has no folder that could name a class."""


@dataclass(frozen=True)
class LabelInfo:
    label: str
    patient_id: str | None
    split: str | None


def label_for_file(folder: str, filename: str) -> str:
    """Class label from the name of the file's folder and the file's own name."""
    name = folder.strip().lower()
    if not name:
        raise UnlabelledError("the file is not inside a label folder (e.g. NORMAL/ or PNEUMONIA/)")
    if name == PNEUMONIA:
        lowered = filename.lower()
        if "bacteria" in lowered:
            return BACTERIAL
        if "virus" in lowered:
            return VIRAL
        return PNEUMONIA
    return _FOLDER_LABELS.get(name, name)


def patient_id(filename: str) -> str | None:
    """Patient id from Kermany file names (``personN_...``, ``[NORMAL2-]IM-XXXX-YYYY``); None if unknown."""
    match = _patient_match(filename)
    return match.group(1) if match else None


def patient_series(filename: str) -> str | None:
    """The numbering a patient id belongs to: the name up to the number (``person``, ``IM-``,
    ``NORMAL2-IM-``), since each series numbers its patients on its own; None if unknown."""
    match = _patient_match(filename)
    return match.string[: match.start(1)] if match else None


def _patient_match(filename: str) -> re.Match | None:
    stem = PurePosixPath(filename).name
    return _PERSON.search(stem) or _KERMANY_NORMAL.match(stem)


def describe(parts: list[str] | tuple[str, ...]) -> LabelInfo:
    """Label, patient id and split for a path split into its components (folders..., file)."""
    if len(parts) < 2:
        raise UnlabelledError("the file is not inside a label folder (e.g. NORMAL/ or PNEUMONIA/)")
    *folders, filename = parts
    folder = folders[-1]
    if folder.strip().lower() in SPLITS:
        raise UnlabelledError(
            f"the file sits directly in the split folder {folder!r}: put it in a label folder below it"
        )
    split = SPLITS.get(folders[-2].strip().lower()) if len(folders) >= 2 else None
    return LabelInfo(label=label_for_file(folder, filename), patient_id=patient_id(filename), split=split)


def class_set(labels: set[str] | list[str]) -> list[str]:
    """The class list of a training run, derived from the data.

    Three classes when pneumonia sub-types are known; when only some are known the run
    falls back to the binary view (sub-types folded into ``pneumonia``).
    """
    present = set(labels)
    if present & set(SUBTYPES) and PNEUMONIA not in present:
        return sorted(present)
    return sorted({PNEUMONIA if label in SUBTYPES else label for label in present})


def training_label(label: str, classes: list[str]) -> str:
    """Map a stored label onto a run's class list (sub-types fold into ``pneumonia`` in binary runs)."""
    if label in classes:
        return label
    if label in SUBTYPES and PNEUMONIA in classes:
        return PNEUMONIA
    raise KeyError(f"label {label!r} is not one of the run's classes {classes}")
