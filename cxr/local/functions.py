"""Running a Lambda function's real handler in this process, as the Lambda runtime would.

The function's configured environment is applied for the duration of the call (under a lock,
since ``os.environ`` is process-wide), a context object is passed, and an exception becomes the
``errorType``/``errorMessage`` payload Lambda returns, which Step Functions reads as the error name.
"""

from __future__ import annotations

import importlib
import os
import threading
import traceback
from contextlib import contextmanager
from typing import Any

from cxr.local.context import LambdaContext

_LOCK = threading.RLock()


def run(handler_path: str, event: Any, environment: dict[str, str], name: str, memory_mb: int = 1024,
        timeout_s: int = 300) -> tuple[Any, str | None]:
    """Call ``module.attr`` with ``event``; returns (result, None) or (error payload, error type)."""
    module_name, attribute = handler_path.rsplit(".", 1)
    context = LambdaContext(function_name=name, memory_limit_in_mb=memory_mb, timeout_seconds=timeout_s)
    with _LOCK, _environment(environment | {"AWS_LAMBDA_FUNCTION_NAME": name}):
        try:
            handler = getattr(importlib.import_module(module_name), attribute)
            return handler(event, context), None
        except Exception as exc:  # Lambda turns any exception into an error payload
            error_type = getattr(exc, "error_type", type(exc).__name__)
            return {
                "errorType": error_type,
                "errorMessage": str(exc),
                "stackTrace": traceback.format_exception(exc)[-5:],
            }, error_type


@contextmanager
def _environment(values: dict[str, str]):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
