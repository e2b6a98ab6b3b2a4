"""Command-line value parsing shared by the `cxr` commands."""

from __future__ import annotations

from cxr.errors import UsageError


def key_values(pairs: list[str], option: str) -> dict[str, str]:
    """``["epochs=8", "lr=0.001"]`` -> ``{"epochs": "8", "lr": "0.001"}``; a malformed pair is a usage error."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} expects KEY=VALUE, not {pair!r}")
        values[key.strip()] = value.strip()
    return values
