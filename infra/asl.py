"""The state machine's ASL out of synthesized CloudFormation, with its references resolved to given values.

Pure functions over template dicts (no ``aws_cdk`` import): the tests and the local mode run the
very definition the CDK app synthesizes, with ``Ref`` / ``Fn::GetAtt`` / ``Fn::ImportValue`` /
``Fn::FindInMap`` / pseudo parameters replaced by local names and ARNs.

A *value name* is how a reference is looked up in ``values``: ``"LogicalId"`` for ``Ref``,
``"LogicalId.Attribute"`` for ``Fn::GetAtt``, ``"AWS::Region"`` etc. for pseudo parameters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

STATE_MACHINE_TYPE = "AWS::StepFunctions::StateMachine"
PSEUDO_PARAMETERS = ("AWS::Region", "AWS::AccountId", "AWS::Partition", "AWS::URLSuffix", "AWS::StackName")


class UnresolvedReference(KeyError):
    """A reference with no value given: the local mode lacks a resource the definition uses."""


@dataclass(frozen=True)
class Reference:
    name: str
    """Value name, the key to give in ``values``."""
    logical_id: str | None
    attribute: str | None
    resource_type: str | None
    path: str | None
    """The resource's CDK construct path (``aws:cdk:path``), to map it to a local resource."""


def find_state_machine(templates: Iterable[Mapping], construct_id: str) -> tuple[str, Mapping]:
    """Logical id and resource of the state machine with that construct id (by its path, or CDK's logical id)."""
    found = [
        (logical_id, resource)
        for template in templates
        for logical_id, resource in template.get("Resources", {}).items()
        if resource.get("Type") == STATE_MACHINE_TYPE
        and (construct_id in _path(resource).split("/")
             or re.fullmatch(rf"{re.escape(construct_id)}[0-9A-F]{{8}}", logical_id))
    ]
    if len(found) != 1:
        raise LookupError(f"expected one state machine {construct_id!r}, found {len(found)}")
    return found[0]


def definition_expression(templates: Iterable[Mapping], construct_id: str) -> Any:
    """The unresolved ``DefinitionString`` (a string or an ``Fn::Join``) of that state machine."""
    _, resource = find_state_machine(templates, construct_id)
    props = resource["Properties"]
    if "DefinitionString" in props:
        return props["DefinitionString"]
    return json.dumps(props["Definition"])


def references(templates: Iterable[Mapping], expression: Any) -> list[Reference]:
    """Every value the expression needs, described so a caller can map each to a local resource."""
    templates = list(templates)
    resources = {lid: r for t in templates for lid, r in t.get("Resources", {}).items()}
    names: dict[str, None] = {}
    _collect(_inline_imports(expression, _exports(templates)), names)
    out = []
    for name in names:
        if name in PSEUDO_PARAMETERS:
            out.append(Reference(name, None, None, None, None))
            continue
        logical_id, _, attribute = name.partition(".")
        resource = resources.get(logical_id, {})
        out.append(Reference(name, logical_id, attribute or None, resource.get("Type"), _path(resource) or None))
    return out


def resolve(expression: Any, values: Mapping[str, Any], templates: Iterable[Mapping] = ()) -> Any:
    """Evaluate the intrinsic functions in ``expression``; mappings and exports come from ``templates``."""
    templates = list(templates)
    mappings: dict[str, Any] = {}
    for template in templates:
        mappings.update(template.get("Mappings", {}))
    exports = _exports(templates)
    return _Resolver(values, mappings, exports).eval(expression)


def definition(templates: Iterable[Mapping], values: Mapping[str, Any], construct_id: str) -> str:
    """The state machine's ASL JSON with every reference replaced from ``values``."""
    templates = list(templates)
    text = resolve(definition_expression(templates, construct_id), values, templates)
    if not isinstance(text, str):
        raise TypeError("a definition must resolve to a string")
    asl = json.loads(text)
    if "StartAt" not in asl or "States" not in asl:
        raise ValueError("the resolved definition is not a state machine (no StartAt/States)")
    return text


def _path(resource: Mapping) -> str:
    return resource.get("Metadata", {}).get("aws:cdk:path", "")


def _exports(templates: list[Mapping]) -> dict[str, Any]:
    """Export name -> the exporting template's value expression (cross-stack references)."""
    return {
        output["Export"]["Name"]: output["Value"]
        for template in templates
        for output in template.get("Outputs", {}).values()
        if isinstance(output.get("Export", {}).get("Name"), str)
    }


def _inline_imports(expression: Any, exports: Mapping[str, Any]) -> Any:
    if isinstance(expression, list):
        return [_inline_imports(e, exports) for e in expression]
    if isinstance(expression, dict):
        if set(expression) == {"Fn::ImportValue"} and isinstance(expression["Fn::ImportValue"], str):
            return _inline_imports(exports.get(expression["Fn::ImportValue"], expression), exports)
        return {k: _inline_imports(v, exports) for k, v in expression.items()}
    return expression


def _collect(expression: Any, names: dict[str, None]) -> None:
    if isinstance(expression, list):
        for e in expression:
            _collect(e, names)
    elif isinstance(expression, dict):
        if set(expression) == {"Ref"}:
            names[expression["Ref"]] = None
        elif set(expression) == {"Fn::GetAtt"}:
            target = expression["Fn::GetAtt"]
            names[".".join(target) if isinstance(target, list) else target] = None
        elif set(expression) == {"Fn::FindInMap"}:
            _collect(expression["Fn::FindInMap"], names)
        else:
            for v in expression.values():
                _collect(v, names)


class _Resolver:
    def __init__(self, values: Mapping[str, Any], mappings: Mapping[str, Any], exports: Mapping[str, Any]):
        self.values, self.mappings, self.exports = values, mappings, exports

    def lookup(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise UnresolvedReference(name) from None

    def eval(self, e: Any) -> Any:
        if isinstance(e, list):
            return [self.eval(x) for x in e]
        if not isinstance(e, dict):
            return e
        if len(e) != 1 or not next(iter(e)).startswith(("Ref", "Fn::")):
            return {k: self.eval(v) for k, v in e.items()}
        (fn, arg), = e.items()
        if fn == "Ref":
            return self.lookup(arg)
        if fn == "Fn::GetAtt":
            return self.lookup(".".join(arg) if isinstance(arg, list) else arg)
        if fn == "Fn::Join":
            separator, parts = arg
            return str(separator).join(str(p) for p in self.eval(parts))
        if fn == "Fn::FindInMap":
            name, top, second = (self.eval(a) for a in arg[:3])
            try:
                return self.mappings[name][top][second]
            except KeyError:
                raise UnresolvedReference(f"Fn::FindInMap {name}/{top}/{second}") from None
        if fn == "Fn::ImportValue":
            export = self.eval(arg)
            if export not in self.exports:
                raise UnresolvedReference(f"Fn::ImportValue {export}")
            return self.eval(self.exports[export])
        if fn == "Fn::Select":
            index, items = self.eval(arg)
            return items[int(index)]
        if fn == "Fn::Split":
            separator, text = self.eval(arg)
            return text.split(separator)
        if fn == "Fn::Sub":
            return self._sub(arg)
        raise ValueError(f"unsupported intrinsic function {fn}")

    def _sub(self, arg: Any) -> str:
        text, local = (arg, {}) if isinstance(arg, str) else (arg[0], self.eval(arg[1]))
        out, i = [], 0
        while (start := text.find("${", i)) >= 0:
            end = text.index("}", start)
            out.append(text[i:start])
            name = text[start + 2:end]
            if name.startswith("!"):
                out.append("${" + name[1:] + "}")
            else:
                out.append(str(local[name] if name in local else self.lookup(name)))
            i = end + 1
        out.append(text[i:])
        return "".join(out)
