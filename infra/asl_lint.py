"""Checks of intrinsic-function string literals in a state machine definition, which AWS enforces and moto does not.

AWS reserves ``'``, ``{``, ``}`` and ``\\`` inside the string literals of intrinsic functions: each must be
escaped with a backslash to appear in the value (Step Functions Developer Guide, "Reserved characters in
intrinsic functions"); the one unescaped use is the ``{}`` placeholder of ``States.Format``'s first
argument, and there must be as many further arguments as placeholders. ``asl-validator`` parses
intrinsics but accepts unescaped braces, and moto's engine runs them, so a definition AWS refuses
passed every offline test: :func:`check` finds these. Pure (no ``aws_cdk``): it reads the ASL as JSON.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

RESERVED = "'{}\\"
FORMAT = "States.Format"


@dataclass(frozen=True)
class Finding:
    location: str
    """Where the expression is: the JSON keys from the definition's root, joined with ``/``."""
    expression: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message} in {self.expression}"


class IntrinsicSyntaxError(ValueError):
    """The expression is not an intrinsic-function call that AWS could parse."""


def check(definition: Mapping[str, Any]) -> list[Finding]:
    """Every intrinsic-function expression of the definition whose string literals AWS would refuse."""
    findings = []
    for location, expression in intrinsic_expressions(definition):
        findings.extend(Finding(location, expression, message) for message in check_expression(expression))
    return findings


def intrinsic_expressions(value: Any, location: str = "") -> Iterator[tuple[str, str]]:
    """(location, expression) of every intrinsic: a string starting ``States.`` under a ``.$`` or ``...Path`` key."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            here = f"{location}/{key}"
            if isinstance(item, str) and item.lstrip().startswith("States.") and key.endswith((".$", "Path")):
                yield here, item
            else:
                yield from intrinsic_expressions(item, here)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from intrinsic_expressions(item, f"{location}/{index}")


def check_expression(expression: str) -> list[str]:
    """What is wrong with one intrinsic expression; an empty list when AWS would accept its literals."""
    try:
        return _Parser(expression).parse()
    except IntrinsicSyntaxError as exc:
        return [str(exc)]


class _Parser:
    """A recursive-descent reader of ``States.Name(argument, ...)``, checking literals as it goes.

    Arguments are string literals, numbers, ``true``/``false``/``null``, paths (``$...``, read up to the
    next top-level comma or parenthesis) and nested calls.
    """

    def __init__(self, text: str):
        self.text, self.at, self.problems = text.strip(), 0, []

    def parse(self) -> list[str]:
        self._call()
        if self.at != len(self.text):
            raise IntrinsicSyntaxError(f"unexpected {self.text[self.at:]!r} after the call (an unescaped ' ends a "
                                       "string literal early)")
        return list(dict.fromkeys(self.problems))

    def _call(self) -> None:
        start = self.at
        while self.at < len(self.text) and (self.text[self.at].isalnum() or self.text[self.at] == "."):
            self.at += 1
        name = self.text[start:self.at]
        if not name.startswith("States.") or not self._take("("):
            raise IntrinsicSyntaxError(f"expected States.<Function>( at {self.text[start:]!r}")
        arguments: list[Any] = []
        self._blank()
        if not self._take(")"):
            while True:
                self._blank()
                arguments.append(self._argument(first_of_format=name == FORMAT and not arguments))
                self._blank()
                if self._take(")"):
                    break
                if not self._take(","):
                    raise IntrinsicSyntaxError(f"expected , or ) in {name} at {self.text[self.at:]!r} (is a ' "
                                               "in a string literal unescaped?)")
        if name == FORMAT and arguments and isinstance(arguments[0], _Literal):
            placeholders = arguments[0].placeholders
            if placeholders != len(arguments) - 1:
                self.problems.append(f"{FORMAT} has {placeholders} {{}} placeholder(s) and "
                                     f"{len(arguments) - 1} value(s)")

    def _argument(self, first_of_format: bool) -> Any:
        char = self.text[self.at:self.at + 1]
        if char == "'":
            return self._literal(first_of_format)
        if char == "$":
            return self._path()
        if self.text.startswith("States.", self.at):
            self._call()
            return None
        start = self.at
        while self.at < len(self.text) and self.text[self.at] not in ",)" and not self.text[self.at].isspace():
            self.at += 1
        token = self.text[start:self.at]
        if token in ("true", "false", "null") or _is_number(token):
            return token
        raise IntrinsicSyntaxError(f"unexpected argument {token or self.text[start:]!r}")

    def _literal(self, placeholders_allowed: bool) -> _Literal:
        self.at += 1  # the opening quote
        literal = _Literal()
        while True:
            if self.at >= len(self.text):
                raise IntrinsicSyntaxError("unterminated string literal")
            char = self.text[self.at]
            if char == "'":
                self.at += 1
                return literal
            if char == "\\":
                escaped = self.text[self.at + 1:self.at + 2]
                if escaped == "" or escaped not in RESERVED:
                    self.problems.append(f"unescaped \\ in string literal (a backslash escapes only {RESERVED}; "
                                         "write \\\\ for a backslash)")
                    self.at += 1
                else:
                    self.at += 2
                continue
            if char == "{" and placeholders_allowed and self.text.startswith("{}", self.at):
                literal.placeholders += 1
                self.at += 2
                continue
            if char in "{}":
                hint = "" if placeholders_allowed else "; only States.Format takes {} placeholders"
                self.problems.append(f"unescaped {char} in string literal (write \\{char}{hint})")
            self.at += 1

    def _path(self) -> str:
        start, depth, quote = self.at, 0, None
        while self.at < len(self.text):
            char = self.text[self.at]
            if quote:
                quote = None if char == quote else quote
            elif char in "'\"" and depth:
                quote = char
            elif char == "[":
                depth += 1
            elif char == "]":
                depth -= 1
            elif depth == 0 and (char in ",)" or char.isspace()):
                break
            self.at += 1
        return self.text[start:self.at]

    def _blank(self) -> None:
        while self.at < len(self.text) and self.text[self.at].isspace():
            self.at += 1

    def _take(self, token: str) -> bool:
        if self.text.startswith(token, self.at):
            self.at += len(token)
            return True
        return False


@dataclass
class _Literal:
    placeholders: int = 0


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
