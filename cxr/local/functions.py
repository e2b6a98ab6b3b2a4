"""Running a Lambda function's real handler in this process, as the Lambda runtime would.

The function's configured environment is applied for the duration of the call (under a lock,
since ``os.environ`` is process-wide; the region is set once for the whole offline cloud), a
context object is passed, and an exception becomes the ``errorType``/``errorMessage`` payload
Lambda returns, which Step Functions reads as the error name.
"""

from __future__ import annotations

import importlib
import io
import os
import sys
import threading
import traceback
from contextlib import contextmanager, nullcontext
from typing import Any, TextIO

from aws_lambda_powertools import Logger

from cxr.local import iam_trace
from cxr.local.context import LambdaContext

_LOCK = threading.RLock()


class ThreadRoutedStdout(io.TextIOBase):
    """``sys.stdout`` while the offline cloud runs: a handler's prints go to its log, everyone else's to the terminal.

    ``contextlib.redirect_stdout`` would be process-wide and swallow the main thread's progress output
    while a long task (training) runs on another thread.
    """

    def __init__(self, terminal: TextIO):
        self.terminal = terminal
        self._local = threading.local()

    @property
    def target(self) -> TextIO:
        return getattr(self._local, "target", None) or self.terminal

    @contextmanager
    def routed_to(self, stream: TextIO):
        previous = getattr(self._local, "target", None)
        self._local.target = stream
        try:
            yield
        finally:
            self._local.target = previous

    def write(self, text: str) -> int:
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()


@contextmanager
def routed_stdout():
    """Install :class:`ThreadRoutedStdout` for the block."""
    router = ThreadRoutedStdout(sys.stdout)
    sys.stdout = router
    try:
        yield router
    finally:
        sys.stdout = router.terminal


def run(handler_path: str, event: Any, environment: dict[str, str], name: str, log: TextIO,
        memory_mb: int = 1024, timeout_s: int = 300, exclusive: bool = True, principal: str | None = None,
        runtime: bool = True) -> tuple[Any, str | None]:
    """Call ``module.attr`` with ``event``; returns (result, None) or (error payload, error type).

    What the function prints or logs goes to ``log``, as Lambda sends it to CloudWatch Logs.
    ``exclusive`` calls hold a lock while the function's environment is applied; a function that
    reads no environment (the local training task) runs alongside the others. The handler's AWS
    calls are ``principal``'s (its role; :mod:`cxr.local.iam_trace`); ``runtime=False`` for a local
    stand-in of a service integration, which has no Lambda runtime (logs, traces) of its own.
    """
    module_name, attribute = handler_path.rsplit(".", 1)
    context = LambdaContext(function_name=name, memory_limit_in_mb=memory_mb, timeout_seconds=timeout_s)
    with (_LOCK if exclusive else nullcontext(), environment_applied(environment if exclusive else {}),
          _printing_to(log), iam_trace.acting_as(principal, lambda_function=name if runtime else None)):
        try:
            module = importlib.import_module(module_name)
            with _logs_to(module, log):
                return getattr(module, attribute)(event, context), None
        except Exception as exc:  # Lambda turns any exception into an error payload
            error_type = getattr(exc, "error_type", type(exc).__name__)
            return {
                "errorType": error_type,
                "errorMessage": str(exc),
                "stackTrace": traceback.format_exception(exc)[-5:],
            }, error_type


def _printing_to(log: TextIO):
    router = sys.stdout
    return router.routed_to(log) if isinstance(router, ThreadRoutedStdout) else nullcontext()


@contextmanager
def _logs_to(module, log: TextIO):
    """Point the module's Powertools loggers (bound to a stream when created) at ``log`` for the call."""
    handlers = [value.registered_handler for value in vars(module).values() if isinstance(value, Logger)]
    previous = [handler.setStream(log) for handler in handlers]
    try:
        yield
    finally:
        for handler, stream in zip(handlers, previous, strict=True):
            handler.setStream(stream)


@contextmanager
def environment_applied(values: dict[str, str]):
    """Set ``values`` in ``os.environ`` for the block, then restore what was there."""
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
