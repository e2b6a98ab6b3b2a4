"""The review loop's copies of an X-ray, both made inside S3 (CopyObject), the original never moved.

* **Review copies** (the inference bucket's ``review/``): what the browser loads through a short-lived presigned URL. A
  presigned URL shows its key, and ``incoming/`` keys hold patient identifiers, so the copy is named by
  content hash; the original's user metadata is replaced (``MetadataDirective=REPLACE``) and the copy says
  ``Cache-Control: no-store``. A DICOM original is rendered instead (its displayed grey levels as a PNG at
  full size): a browser cannot show DICOM, and its header names the patient.
* **Training copies** (``DATA_BUCKET``): a verdict's X-ray under ``raw/<dataset>/<FOLDER>/<hash><ext>``
  (:func:`lambdas.domain.review.training_folder`), carrying the verdict (``cxr-review-verdict``, which
  makes its label win over folder labels of the same pixels at ingest) and the original's patient id
  (``cxr-patient-id``, so the patient-grouped split keeps it with the patient's other images).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import PurePosixPath

from lambdas import aws, s3io
from lambdas.domain import labels, layout, review, source_state, uploads

IMAGE_SUFFIXES = {".jpeg": "image/jpeg", ".jpg": "image/jpeg", ".png": "image/png"}
NO_STORE = "no-store"


def original_key(task: dict) -> str:
    """The ``incoming/`` key of the task's upload, from its name's pointer: a task names the upload, never keys it
    (``lambdas/domain/source_names.py``), and only roles that read originals read pointers."""
    key = s3io.pointed_key(task["bucket"], layout.INCOMING, task["name"])
    if key is None:
        raise LookupError(f"no pointer to the upload named {task['name']}")
    return key


def content_name(task: dict) -> str:
    """The task's content hash (the normalised pixels', from the prediction's audit block), else the bytes'."""
    if task.get("content_hash"):
        return task["content_hash"]
    body = aws.client("s3").get_object(Bucket=task["bucket"], Key=original_key(task),
                                       **_version(task.get("version_id")))["Body"].read()
    return hashlib.sha256(body).hexdigest()


def suffix(key: str) -> str:
    """The original's suffix when it is one the browser displays; the copy keeps it, nothing else of the name."""
    ext = PurePosixPath(key).suffix.lower()
    return ext if ext in IMAGE_SUFFIXES else ""


def _version(version_id: str | None) -> dict:
    return {"VersionId": version_id} if version_id else {}


def _exists(bucket: str, key: str) -> bool:
    try:
        aws.client("s3").head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if aws.is_missing(exc):
            return False
        raise
    return True


def review_copies(task: dict, review_bucket: str) -> dict[str, str]:
    """``image`` (and ``overlay`` when the prediction kept one): keys of the content-named copies, made once."""
    name, original = f"{layout.REVIEW}{content_name(task)}", original_key(task)
    copies = {"image": f"{name}{suffix(original) or '.png'}"}
    sources = {"image": (original, task.get("version_id"), IMAGE_SUFFIXES.get(suffix(original), "image/png"))}
    if task.get("overlay_key"):
        copies["overlay"] = f"{name}{layout.OVERLAY_SUFFIX}"
        sources["overlay"] = (task["overlay_key"], None, "image/png")
    for role, key in copies.items():
        if not _exists(review_bucket, key):
            source_key, version, content_type = sources[role]
            if role == "image" and not suffix(source_key):  # a DICOM (or unnamed) original: look before copying
                body = aws.client("s3").get_object(Bucket=task["bucket"], Key=source_key,
                                                   **_version(version))["Body"].read()
                if uploads.is_dicom(body):
                    aws.client("s3").put_object(Bucket=review_bucket, Key=key, Body=_rendered_dicom(body),
                                                ContentType="image/png", CacheControl=NO_STORE)
                    continue
            aws.client("s3").copy_object(
                Bucket=review_bucket, Key=key, CopySource={"Bucket": task["bucket"], "Key": source_key,
                                                           **_version(version)},
                MetadataDirective="REPLACE", ContentType=content_type, CacheControl=NO_STORE)
    return copies


def _rendered_dicom(data: bytes) -> bytes:
    """The DICOM's displayed grey levels as a PNG with no metadata (pydicom only when a DICOM is reviewed)."""
    from lambdas.domain import dicom  # noqa: PLC0415

    grey, _ = dicom.displayed(data)
    out = io.BytesIO()
    grey.save(out, format="PNG")
    return out.getvalue()


def training_key(task: dict, verdict: str, dataset: str) -> str | None:
    """Where the verdict's copy goes under ``raw/``, or None when the verdict adds nothing to train on."""
    folder = review.training_folder(verdict, task.get("probabilities") or {})
    if folder is None:
        return None
    return f"{layout.RAW}{dataset}/{folder}/{content_name(task)}{suffix(original_key(task))}"


def copy_for_training(task: dict, verdict: str, dataset: str, data_bucket: str) -> str | None:
    """Copy the reviewed original (the task's version) into the dataset; idempotent. Returns the raw key."""
    key = training_key(task, verdict, dataset)
    if key is None or _exists(data_bucket, key):
        return key
    metadata, original = {source_state.REVIEW_METADATA: task["pk"]}, original_key(task)
    patient = labels.patient_id(layout.file_name(original))
    if patient:
        metadata[review.PATIENT_METADATA] = patient
    aws.client("s3").copy_object(
        Bucket=data_bucket, Key=key, CopySource={"Bucket": task["bucket"], "Key": original,
                                                 **_version(task.get("version_id"))},
        MetadataDirective="REPLACE", Metadata=metadata, ContentType=IMAGE_SUFFIXES.get(suffix(original),
                                                                                       "application/octet-stream"))
    return key
