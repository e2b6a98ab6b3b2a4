"""IAM policy evaluation: do these policies let this principal make this request?

moto evaluates no policy of its own for us (its IAM access control matches resources for S3 only
and ignores conditions), so the offline cloud decides here, following AWS's evaluation logic for
requests inside one account
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html):

* an explicit ``Deny`` in any applicable policy wins;
* otherwise an ``Allow`` in an identity-based policy, or in the resource's policy naming the
  principal, allows;
* except for a KMS key, whose key policy must allow the principal itself, or the account (which
  then defers to the identity-based policies)
  (https://docs.aws.amazon.com/kms/latest/developerguide/determining-access-key-policy.html).

A statement's ``Action`` / ``NotAction`` (case-insensitive), ``Resource`` / ``NotResource`` (case-
sensitive) and string conditions take the ``*`` and ``?`` wildcards; the condition operators are
AWS's string, numeric, ``Bool``, ``Arn`` and ``Null`` families with ``IfExists`` and the
``ForAnyValue:`` / ``ForAllValues:`` set qualifiers. What this evaluator cannot read (policy
variables, ``NotPrincipal``, an unknown operator) raises :class:`UnsupportedPolicy`: a test fails
rather than passing a policy nobody checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

ContextValue = str | tuple[str, ...]


class UnsupportedPolicy(ValueError):
    """A policy element this evaluator does not implement."""


@dataclass(frozen=True)
class Request:
    """One authorization: who, which IAM action, on which resource ARN, with which condition keys."""

    principal: str
    action: str
    resource: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """A policy document and the name a decision quotes (``role/Predict-Role: PredictRoleDefaultPolicy``)."""

    name: str
    document: Mapping[str, Any]

    @property
    def statements(self) -> list[Mapping[str, Any]]:
        statements = self.document.get("Statement", [])
        return [statements] if isinstance(statements, Mapping) else list(statements)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def evaluate(request: Request, identity: Sequence[Policy], resource_policy: Policy | None = None, *,
             account: str, key_policy: bool = False) -> Decision:
    """Decide ``request``; ``resource_policy`` is the bucket's or key's policy, ``key_policy`` says it is a key's."""
    for policy in identity:
        for statement in policy.statements:
            if statement.get("Effect") == "Deny" and applies(statement, request):
                return Decision(False, f"explicitly denied by {policy.name}")
    grant = None  # what the resource policy grants: "principal" (this role) or "account"
    if resource_policy is not None:
        for statement in resource_policy.statements:
            scope = principal_scope(statement, request.principal, account)
            if scope is None or not applies(statement, request, attached=True):
                continue
            if statement.get("Effect") == "Deny":
                return Decision(False, f"explicitly denied by {resource_policy.name}")
            if statement.get("Effect") == "Allow" and grant != "principal":
                grant = scope
    identity_allows = any(statement.get("Effect") == "Allow" and applies(statement, request)
                          for policy in identity for statement in policy.statements)
    if grant == "principal":
        return Decision(True, f"allowed by {resource_policy.name}")
    if key_policy and grant is None:
        return Decision(False, f"{resource_policy.name} allows neither the role nor the account")
    if identity_allows:
        return Decision(True, "allowed by an identity-based policy")
    return Decision(False, "no identity-based policy allows it")


def applies(statement: Mapping[str, Any], request: Request, *, attached: bool = False) -> bool:
    """Action, resource and conditions of one statement all match the request (principal aside).

    ``attached``: the statement is in the resource's own policy, where no ``Resource`` means that resource
    (a role's trust policy).
    """
    resource = attached and "Resource" not in statement and "NotResource" not in statement
    return (_matches_action(statement, request.action) and (resource or _matches_resource(statement, request.resource))
            and conditions_hold(statement.get("Condition", {}), request.context))


def principal_scope(statement: Mapping[str, Any], principal: str, account: str) -> str | None:
    """``"principal"`` if a resource policy's statement names this role (or anyone), ``"account"`` if it
    names the role's account (access then also needs an identity-based allow), else None."""
    if "NotPrincipal" in statement:
        raise UnsupportedPolicy("NotPrincipal")
    named = statement.get("Principal")
    if named is None:
        raise UnsupportedPolicy("a resource policy statement without Principal")
    if named == "*":
        return "principal"
    scope = None
    for value in _as_list(named.get("AWS", [])):
        if value == "*" or value == principal:
            return "principal"
        if value in (account, f"arn:aws:iam::{account}:root"):
            scope = "account"
    if principal in _as_list(named.get("Service", [])):  # a service assuming a role (trust policies)
        return "principal"
    return scope


def _matches_action(statement: Mapping[str, Any], action: str) -> bool:
    if "Action" in statement:
        return any(_wildcard(pattern, action, ignore_case=True) for pattern in _as_list(statement["Action"]))
    if "NotAction" in statement:
        return not any(_wildcard(pattern, action, ignore_case=True) for pattern in _as_list(statement["NotAction"]))
    raise UnsupportedPolicy("a statement with neither Action nor NotAction")


def _matches_resource(statement: Mapping[str, Any], resource: str) -> bool:
    if "Resource" in statement:
        return any(_wildcard(pattern, resource) for pattern in _as_list(statement["Resource"]))
    if "NotResource" in statement:
        return not any(_wildcard(pattern, resource) for pattern in _as_list(statement["NotResource"]))
    raise UnsupportedPolicy("a statement with neither Resource nor NotResource")


def conditions_hold(condition: Mapping[str, Mapping[str, Any]], context: Mapping[str, ContextValue]) -> bool:
    """Every operator, and every key under it, must hold (AWS ANDs them; a key's policy values are ORed)."""
    request = {key.lower(): value for key, value in context.items()}  # condition key names are case-insensitive
    for operator, keys in condition.items():
        for key, expected in keys.items():
            if not _condition_holds(operator, request.get(key.lower()), [str(v) for v in _as_list(expected)]):
                return False
    return True


def _condition_holds(operator: str, actual: ContextValue | None, expected: list[str]) -> bool:
    qualifier, _, base = operator.rpartition(":")
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    if base == "Null":
        return (actual is None) == (expected[0].lower() == "true")
    compare, negated = _operator(base)
    if actual is None:
        # A missing key: IfExists and negated operators hold, ForAllValues holds (an empty set), the rest fail.
        return if_exists or (negated and not qualifier) or qualifier == "ForAllValues"
    values = actual if isinstance(actual, tuple) else (actual,)

    def matches(value: str) -> bool:
        return any(compare(value, pattern) for pattern in expected)

    if qualifier == "ForAnyValue":
        return any(matches(v) != negated for v in values)
    if qualifier == "ForAllValues":
        return all(matches(v) != negated for v in values)
    if qualifier:
        raise UnsupportedPolicy(f"condition qualifier {qualifier}")
    if len(values) != 1:
        raise UnsupportedPolicy(f"{operator} on a multivalued key needs ForAnyValue: or ForAllValues:")
    return matches(values[0]) != negated


_COMPARISONS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda actual, wanted: actual == wanted,
    "StringEqualsIgnoreCase": lambda actual, wanted: actual.lower() == wanted.lower(),
    "StringLike": lambda actual, wanted: _wildcard(wanted, actual),
    "NumericEquals": lambda actual, wanted: float(actual) == float(wanted),
    "NumericLessThan": lambda actual, wanted: float(actual) < float(wanted),
    "NumericLessThanEquals": lambda actual, wanted: float(actual) <= float(wanted),
    "NumericGreaterThan": lambda actual, wanted: float(actual) > float(wanted),
    "NumericGreaterThanEquals": lambda actual, wanted: float(actual) >= float(wanted),
    "Bool": lambda actual, wanted: actual.lower() == wanted.lower(),
    "ArnEquals": lambda actual, wanted: _arn_like(actual, wanted),
    "ArnLike": lambda actual, wanted: _arn_like(actual, wanted),
}
_NEGATED = {"StringNotEquals": "StringEquals", "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
            "StringNotLike": "StringLike", "NumericNotEquals": "NumericEquals", "ArnNotEquals": "ArnEquals",
            "ArnNotLike": "ArnLike"}


def _operator(name: str) -> tuple[Callable[[str, str], bool], bool]:
    """The comparison of a condition operator, and whether the operator negates it (``StringNotLike``...)."""
    positive = _NEGATED.get(name, name)
    if positive not in _COMPARISONS:
        raise UnsupportedPolicy(f"condition operator {name}")
    return _COMPARISONS[positive], positive != name


def _arn_like(arn: str, pattern: str) -> bool:
    """ArnLike compares the six colon-separated parts one by one, each with wildcards."""
    actual, wanted = arn.split(":", 5), pattern.split(":", 5)
    return len(actual) == len(wanted) == 6 and all(_wildcard(w, a) for w, a in zip(wanted, actual, strict=True))


def _wildcard(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    if "${" in pattern:
        raise UnsupportedPolicy(f"policy variable in {pattern!r}")
    return _compiled(pattern, ignore_case).fullmatch(value) is not None


@cache
def _compiled(pattern: str, ignore_case: bool) -> re.Pattern:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def without_action(statements: Iterable[Mapping[str, Any]], action: str) -> list[Mapping[str, Any]]:
    """The statements with ``action`` taken out of every Allow that grants it (for mutation tests).

    An ``Action`` list loses each entry matching ``action`` (a wildcard entry with it); a ``NotAction``
    Allow gets ``action`` added to what it excludes; a statement left with no action is dropped.
    """
    result = []
    for statement in statements:
        statement = dict(statement)
        if statement.get("Effect") == "Allow" and "Action" in statement:
            kept = [a for a in _as_list(statement["Action"]) if not _wildcard(a, action, ignore_case=True)]
            if not kept:
                continue
            statement["Action"] = kept
        elif statement.get("Effect") == "Allow" and "NotAction" in statement:
            statement["NotAction"] = [*_as_list(statement["NotAction"]), action]
        result.append(statement)
    return result
