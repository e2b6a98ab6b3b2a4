"""Opaque names of uploads: what every derived object, record and log calls an upload instead of its key.

Why. Hospitals name exports after the patient (``DOE_JOHN_MRN1234567_chest.dcm``), and a JPEG's name
can carry an MRN as well as a DICOM's, so no key under ``raw/`` or ``incoming/`` may leave those
prefixes: not in ``processed/``, ``quarantine/``, ``predictions/``, ``rejected/`` or ``results-dicom/``
keys, not in sidecars, error documents, prediction records, state records, review tasks or logs. This
applies to every format alike: the name is needed before the body is read (a delete has no body), and
the file's format cannot be known from its name.

What. ``s-`` and 32 hex digits of HMAC-SHA-256 over ``bucket/key``, keyed by the deployment's retained
pseudonym secret (:mod:`lambdas.pseudonyms`, the key of :mod:`lambdas.domain.deid`'s pseudonyms):

* *stable*: every version, re-delivered event, overwrite and delete of one key has one name, so one
  state record decides the key's current outcome, a re-upload rewrites the same derived objects and a
  delete retires exactly them, as before;
* *keyed*: an unkeyed hash of a guessable file name could be confirmed by hashing guesses (MRNs are
  short numbers); without the secret a name says nothing about the key.

The way back. Re-deriving a key needs its key, and two records refer to each other when identical
pixels were uploaded twice (:mod:`lambdas.domain.source_state`, label conflicts). The key of a name
lives only where identity is allowed: the pointer object :func:`pointer_key` (``raw/.names/<name>``,
``incoming/.names/<name>``), whose body is the key, written by the function that names the key and read
by the roles that already read the originals. Anyone else holding the secret (``cxr fsck``, ``cxr
audit``) recomputes names from the keys it lists.
"""

from __future__ import annotations

import hashlib
import hmac

NAME_PREFIX = "s-"
POINTERS = ".names/"
"""Folder, inside ``raw/`` and ``incoming/``, of the objects that give a name's key (never an upload)."""


def name(secret: bytes, bucket: str, key: str) -> str:
    """The opaque, stable name of ``s3://bucket/key``."""
    return NAME_PREFIX + hmac.new(secret, f"SourceKey:{bucket}/{key}".encode(), hashlib.sha256).hexdigest()[:32]


def area(key: str) -> str:
    """The top-level prefix of an upload (``raw/`` or ``incoming/``)."""
    return key.split("/", 1)[0] + "/"


def pointer_key(key: str, source_name: str) -> str:
    """Where the key of ``source_name`` is kept, inside the upload's own prefix."""
    return f"{area(key)}{POINTERS}{source_name}"


def is_pointer(key: str) -> bool:
    """A pointer object, which triggers the upload's function like any object and must be skipped."""
    return key.startswith(area(key) + POINTERS)
