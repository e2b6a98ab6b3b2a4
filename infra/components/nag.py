"""Acknowledging cdk-nag findings, always with the reason in code next to the resource it is about."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(scope: IConstruct, reason: str, *rule_ids: str) -> None:
    """cdk-nag v3 takes one acknowledgement per finding (``RuleId[Finding]``); all share this reason."""
    Validations.of(scope).acknowledge(*(Acknowledgment(id=rule_id, reason=reason) for rule_id in rule_ids))
