"""AWS clients and error classification shared by the handlers.

Clients are created lazily (after any test double is active) with botocore's standard
retry mode, so throttling is retried with backoff before a handler ever sees it.
"""

from __future__ import annotations

import functools

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)
ENDPOINT_READ_TIMEOUT_S = 70
"""InvokeEndpoint gives the model container 60 s to answer, and AWS's API reference says to set the SDK's socket
timeout to 70 s for a model that may take 50-60 s (the old 30 s cut a serverless cold start short). A cold start
(model download and container start, which SageMaker allows 3 minutes) that outlasts the call ends in
``ModelNotReadyException`` ("a serverless endpoint variant's resources are still being provisioned ... try your
request again", SageMaker Runtime's error reference) or a read timeout: botocore retries the timeout, and the
predict Lambda raises the error so that Lambda retries the event a minute later."""
ENDPOINT_ATTEMPTS = 3
ENDPOINT_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": ENDPOINT_ATTEMPTS}, connect_timeout=5,
                         read_timeout=ENDPOINT_READ_TIMEOUT_S)
"""SageMaker Runtime's client: three attempts in all (the first and two retries), each allowed the whole 60 s."""
MAX_BACKOFF_S = 20 + 5
"""The longest pause between two attempts in botocore's standard mode (20 s cap, plus up to 5 s of retry-after)."""
_CONFIGS = {"sagemaker-runtime": ENDPOINT_CONFIG}

_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "404", "NotFound"})


class TransientError(RuntimeError):
    """Raised out of a handler so that Lambda retries the event (then sends it to the on-failure destination)."""


@functools.cache
def client(service: str):
    return boto3.client(service, config=_CONFIGS.get(service, RETRY_CONFIG))


def endpoint_call_budget_s() -> float:
    """The longest one endpoint call can take with its retries: what the predict Lambda's timeout must exceed."""
    per_attempt = ENDPOINT_CONFIG.connect_timeout + ENDPOINT_CONFIG.read_timeout
    return ENDPOINT_ATTEMPTS * per_attempt + (ENDPOINT_ATTEMPTS - 1) * MAX_BACKOFF_S


def reset_clients() -> None:
    """Forget cached clients (tests switch endpoints and credentials between cases)."""
    client.cache_clear()


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: throttling, timeouts, 5xx and dropped connections."""
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
        return error_code(exc) in _TRANSIENT_CODES or status >= 500 or status == 429
    return False


def is_missing(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and error_code(exc) in _MISSING_CODES
