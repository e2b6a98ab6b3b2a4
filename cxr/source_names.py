"""The deployment's opaque names of uploads, for commands that start from keys they uploaded or listed.

Every object and record outside ``raw/`` and ``incoming/`` names an upload by a keyed HMAC of its
key, never the key (``lambdas/domain/source_names.py``); a command that knows the keys computes
their names with the deployment's pseudonym secret, which its AWS credentials can read.
"""

from __future__ import annotations

from collections.abc import Callable

from infra import wiring
from lambdas.domain import source_names


def namer(secretsmanager, stage: str, bucket: str) -> Callable[[str], str]:
    """key -> its name in ``bucket``, keyed by the stage's pseudonym secret."""
    secret = secretsmanager.get_secret_value(SecretId=wiring.PSEUDONYM_SECRET_NAME.format(stage=stage))["SecretString"]
    return lambda key: source_names.name(secret.encode(), bucket, key)
