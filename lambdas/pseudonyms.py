"""The deployment's pseudonym key: a Secrets Manager secret the stacks create and retain, read once a container.

It keys DICOM pseudonyms and every upload's opaque name (:mod:`lambdas.domain.source_names`). The key never changes
(no rotation is configured): a new key would give every patient a new pseudonym and split one
patient's images across training splits (:mod:`lambdas.domain.deid`).
"""

from __future__ import annotations

import functools

from lambdas import aws
from lambdas.domain import source_names
from lambdas.domain.settings import Settings


def key(settings: Settings) -> bytes:
    """The HMAC key named by ``PSEUDONYM_SECRET_ARN``; a missing variable fails loudly, never a keyless hash."""
    settings.require("pseudonym_secret")
    return _secret(settings.pseudonym_secret)


@functools.lru_cache(maxsize=4)
def _secret(secret_id: str) -> bytes:
    value = aws.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]
    if len(value) < 32:
        raise RuntimeError("the pseudonym secret is shorter than 32 characters: too weak to key an HMAC")
    return value.encode()


def forget() -> None:
    """Drop the cached key: the offline cloud makes a new secret under the same name each time it starts."""
    _secret.cache_clear()


def source_name(settings: Settings, bucket: str, object_key: str) -> str:
    """The upload's opaque name (:mod:`lambdas.domain.source_names`), keyed by the same secret."""
    return source_names.name(key(settings), bucket, object_key)
