"""CloudWatch Logs retention from a number of days (jsii exposes the enum by member name only)."""

from __future__ import annotations

from aws_cdk import aws_logs as logs

from infra.config import LOG_RETENTION_DAYS

_FINITE = [member for member in logs.RetentionDays if member is not logs.RetentionDays.INFINITE]
assert len(_FINITE) == len(LOG_RETENTION_DAYS), "aws-cdk-lib's RetentionDays changed: update LOG_RETENTION_DAYS"
_BY_DAYS = dict(zip(LOG_RETENTION_DAYS, _FINITE, strict=True))


def retention(days: int) -> logs.RetentionDays:
    return _BY_DAYS[days]
