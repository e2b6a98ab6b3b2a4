"""The radiologist review loop's rules, free of AWS calls: which predictions are reviewed, and what a verdict means.

* **Which.** Every referred prediction, and a quality-control sample of the others (``REVIEW_SAMPLE_RATE``,
  2 % by default). The sample is drawn from a hash of the task id, not from a random generator, so that S3
  delivering an event twice, late or on two threads gives the same decision every time.
* **One task per (bucket, key, version)**, its id derived from them: a duplicate delivery writes the same
  item (a conditional put), and when the key's current version moves on, the older version's open task
  is withdrawn (a verdict already given stays).
* **Verdicts become data** through an explicit mapping onto the dataset's label folders
  (:func:`training_folder`): never a folder that would change the dataset's class set, never a file name
  that could re-derive a sub-type (the copy is named by content hash, hex digits only).
"""

from __future__ import annotations

import hashlib

from .labels import BACTERIAL, NORMAL, PNEUMONIA, VIRAL

DEFAULT_SAMPLE_RATE = 0.02

# Task statuses; only OPEN and ADJUDICATION tasks are in the queue.
OPEN = "open"
REVIEWED = "reviewed"
ADJUDICATION = "adjudication"
"""Two reviewers gave different verdicts: a third reads it (and ingest trains on neither copy meanwhile)."""
WITHDRAWN = "withdrawn"
"""The key's current version moved on (overwritten, deleted, rejected) before anyone reviewed it."""
QUEUED = (OPEN, ADJUDICATION)

# Why a prediction is reviewed.
REFERRED = "referred"
QUALITY_CONTROL = "quality_control"

REVIEWERS_GROUP = "reviewers"
"""The Cognito group whose members may review; the API's JWT authorizer checks the token, the handler the group."""
ROUTES = ("GET /tasks", "GET /tasks/{id}", "POST /tasks/{id}/verdict")
"""The review API's routes (HTTP API route keys), every one behind the JWT authorizer."""

TASK_SORT_KEY = "task"
VERDICT_PREFIX = "verdict#"
VIEW_PREFIX = "view#"

UNSPECIFIED, NOT_ASSESSABLE = "pneumonia_unspecified", "not_assessable"
VERDICTS = (NORMAL, BACTERIAL, VIRAL, UNSPECIFIED, NOT_ASSESSABLE)
"""What a reviewer may answer; keyboard shortcuts 1-5 on the page, in this order."""
MAX_COMMENT = 2000

PATIENT_METADATA = "cxr-review-patient-id"
"""S3 user metadata on a reviewed copy: the patient id the original's file name gives (as ingest derives it from a
name), since the copy's name no longer holds it. Not ``cxr-patient-id`` (``layout.PATIENT_METADATA``), a declared
id that ingest pseudonymises: the original's other images carry the name-derived id, and the split must group
them together."""


def task_id(bucket: str, source_name: str, version_id: str | None) -> str:
    """One id per (bucket, upload, version), from the upload's opaque name (keys hold patient identifiers)."""
    return hashlib.sha256(f"{bucket}/{source_name}?versionId={version_id or 'null'}".encode()).hexdigest()[:32]


def sampled(task: str, rate: float) -> bool:
    """Whether a prediction the model did not refer is drawn for quality control: the same answer every time."""
    draw = int.from_bytes(hashlib.sha256(f"quality-control/{task}".encode()).digest()[:8], "big") / 2 ** 64
    return draw < rate


def reason_to_review(prediction: dict, task: str, rate: float) -> str | None:
    """``referred``, ``quality_control`` or None (no task)."""
    if prediction.get("refer_to_radiologist"):
        return REFERRED
    return QUALITY_CONTROL if sampled(task, rate) else None


def parse_sample_rate(text: str | None) -> float:
    rate = DEFAULT_SAMPLE_RATE if text in (None, "") else float(text)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"REVIEW_SAMPLE_RATE must be in [0, 1], got {text!r}")
    return rate


def three_class(classes) -> bool:
    """Whether the model that made the prediction (and so its dataset) tells bacterial from viral."""
    return bool({BACTERIAL, VIRAL} & set(classes))


def training_folder(verdict: str, classes) -> str | None:
    """The dataset's label folder a verdict's copy goes into, or None (no training folder).

    normal -> ``NORMAL``, bacterial -> ``BACTERIAL``, viral -> ``VIRAL``; pneumonia unspecified only into a
    two-class dataset (``PNEUMONIA``: in a three-class one it would fold the dataset into two classes);
    not assessable into none.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}; one of {', '.join(VERDICTS)}")
    if verdict == NOT_ASSESSABLE:
        return None
    if verdict == UNSPECIFIED:
        return None if three_class(classes) else PNEUMONIA.upper()
    return verdict.upper()


def agrees(model_label: str, verdict: str) -> bool | None:
    """Whether the model's label matches the verdict (None: the verdict cannot be compared).

    A binary model's ``pneumonia`` agrees with bacterial, viral and unspecified; not assessable says nothing.
    """
    if verdict == NOT_ASSESSABLE:
        return None
    if model_label == PNEUMONIA:
        return verdict != NORMAL
    if verdict == UNSPECIFIED:
        return model_label != NORMAL
    return model_label == verdict
