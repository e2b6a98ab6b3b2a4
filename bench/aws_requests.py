"""Counting the AWS requests a bench step makes, by operation (shared by the scale benches)."""

from __future__ import annotations

from collections import Counter


def count_requests() -> Counter:
    """Requests made from here on in this process, by operation: with a request's latency on AWS they give a step's
    time there (the wall time on the offline cloud is mostly moto's)."""
    from botocore.client import BaseClient

    calls, make = Counter(), BaseClient._make_api_call

    def counted(self, operation, params):
        calls[operation] += 1
        return make(self, operation, params)

    BaseClient._make_api_call = counted
    return calls
