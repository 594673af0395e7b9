"""The policies file of ``ratewatch policies apply``: YAML in, validated policies out, and
the difference between them and what the store holds.

Format (``docs/policies.md``)::

    policies:
      free:
        limits:
          - {limit: 10, window: 1}
          - {limit: 1000, window: 3600}
        algorithm: sliding_window   # optional
        mode: enforce               # optional: enforce | shadow
        overrides:                  # optional
          "acct:enterprise-*":
            limits: [{limit: 100, window: 1}]

An invalid file is refused as a whole, naming the line and the field: the line comes from
the YAML node marks of the composed document, the field from the validation message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml  # type: ignore[import-untyped]  # no stubs are installed for it

from limiter.errors import InvalidInput
from limiter.policies.model import (
    Override,
    Policy,
    Rule,
    check_identifier,
    check_name,
    parse_rule,
)

_FIELD = re.compile(r"`([^`]+)`")


class PolicyFileError(ValueError):
    """The file cannot be applied; the message names the file, the line and the field."""


@dataclass
class Desired:
    """What a file declares: rules by policy name, and each policy's overrides' rules."""

    policies: dict[str, Rule] = field(default_factory=dict)
    overrides: dict[str, dict[str, Rule]] = field(default_factory=dict)


def _lines(node: yaml.Node, path: str, found: dict[str, int]) -> None:
    """Every path of the document (``$.policies.free.limits[0].limit``) -> its line (from 1)."""
    found[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = f"{path}.{key.value}"
            _lines(value, name, found)
            found[name] = key.start_mark.line + 1  # the key's line: where the field is named
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, f"{path}[{index}]", found)


def _line_of(message: str, lines: dict[str, int]) -> int | None:
    """The line of the field a validation message names (the nearest enclosing one)."""
    match = _FIELD.search(message)
    if match is None:
        return None
    path = match.group(1)
    while path:
        line = lines.get(path)
        if line is not None:
            return line
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


def parse(text: str, source: str) -> Desired:
    """The policies ``text`` declares; PolicyFileError naming ``source``, line and field."""
    try:
        document = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f":{mark.line + 1}" if mark is not None else ""
        raise PolicyFileError(f"{source}{at}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise PolicyFileError(f"{source}: not valid YAML: {exc}") from None
    lines: dict[str, int] = {}
    if root is not None:
        _lines(root, "$", lines)
    try:
        return _desired(document)
    except InvalidInput as exc:
        line = _line_of(str(exc), lines)
        where = f"{source}:{line}" if line is not None else source
        raise PolicyFileError(f"{where}: {exc}") from None


def _desired(document: Any) -> Desired:
    if not isinstance(document, dict) or set(document) != {"policies"}:
        raise InvalidInput("`$` must be a mapping with one key, `policies`")
    policies = document["policies"] or {}
    if not isinstance(policies, dict):
        raise InvalidInput("`$.policies` must be a mapping of policy names to policies")
    desired = Desired()
    for name, body in policies.items():
        where = f"$.policies.{name}"
        try:
            check_name(name)
        except InvalidInput as exc:
            raise InvalidInput(f"`{where}`: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidInput(f"`{where}` must be a mapping with `limits`")
        own = {k: v for k, v in body.items() if k != "overrides"}
        desired.policies[name] = parse_rule(own, where)
        overrides = body.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise InvalidInput(f"`{where}.overrides` must be a mapping of identifiers")
        rules: dict[str, Rule] = {}
        for identifier, override in overrides.items():
            at = f"{where}.overrides.{identifier}"
            try:
                check_identifier(identifier)
            except InvalidInput as exc:
                raise InvalidInput(f"`{at}`: {exc}") from None
            rules[identifier] = parse_rule(override, at)
        desired.overrides[name] = rules
    return desired


@dataclass(frozen=True)
class Change:
    """One step of an apply: ``+`` create, ``~`` change, ``-`` delete."""

    sign: str
    policy: str
    identifier: str | None = None  # an override's; None for the policy itself
    rule: Rule | None = None  # what it becomes (None for a deletion)

    def describe(self) -> str:
        what = self.policy if self.identifier is None else f"{self.policy} / {self.identifier}"
        kind = "policy" if self.identifier is None else "override"
        detail = "" if self.rule is None else f"  {_summary(self.rule)}"
        return f"{self.sign} {kind} {what}{detail}"


def _summary(rule: Rule) -> str:
    text = ", ".join(f"{w.limit}/{w.window}s" for w in rule.limits)
    if rule.algorithm is not None:
        text += f" {rule.algorithm.value}"
    if rule.mode is not None:
        text += f" {rule.mode.value}"
    return text


def diff(
    desired: Desired, policies: list[Policy], overrides: dict[str, list[Override]]
) -> list[Change]:
    """What makes the store hold exactly ``desired``: policies and overrides the file does
    not name are deleted (a policy's deletion takes its overrides along)."""
    changes: list[Change] = []
    current = {p.name: p.rule for p in policies}
    for name, rule in sorted(desired.policies.items()):
        if name not in current:
            changes.append(Change("+", name, None, rule))
        elif current[name] != rule:
            changes.append(Change("~", name, None, rule))
        existing = {o.identifier: o.rule for o in overrides.get(name, [])}
        wanted = desired.overrides.get(name, {})
        for identifier, own in sorted(wanted.items()):
            if identifier not in existing:
                changes.append(Change("+", name, identifier, own))
            elif existing[identifier] != own:
                changes.append(Change("~", name, identifier, own))
        changes += [
            Change("-", name, identifier) for identifier in sorted(set(existing) - set(wanted))
        ]
    changes += [Change("-", name) for name in sorted(set(current) - set(desired.policies))]
    return changes


def export(policies: list[Policy], overrides: dict[str, list[Override]]) -> str:
    """The store's policies as a file ``apply`` reads back to no change."""
    document: dict[str, Any] = {}
    for policy in policies:
        body = policy.rule.public()
        own = overrides.get(policy.name, [])
        if own:
            body["overrides"] = {o.identifier: o.rule.public() for o in own}
        document[policy.name] = body
    text: str = yaml.safe_dump({"policies": document}, sort_keys=False, default_flow_style=None)
    return text
