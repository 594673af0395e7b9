"""The policy model: a named set of windows, its overrides, and which one applies.

A policy is one to ``MAX_WINDOWS`` windows (``limit`` requests per ``window`` seconds), an
optional algorithm (else the server's default) and a mode: ``enforce`` denies, ``shadow``
answers allowed and records what it would have denied.  An override replaces a policy's
windows for the identifiers it names: one exactly, or every identifier that starts with a
prefix (``acct:enterprise-*``).  The most specific override wins: an exact identifier over
any wildcard, a longer prefix over a shorter one; with none, the policy itself applies.

Every parser here raises ``InvalidInput`` naming the bad field, so the API (422) and
``ratewatch policies apply`` (the file's line) say what is wrong the same way.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from limiter.algorithms import MAX_LIMIT_WINDOW, MAX_WINDOW_SECONDS, Algorithm
from limiter.errors import InvalidInput

MAX_WINDOWS = 8
MAX_LIMIT = 10**12
MAX_POLICY_NAME = 64
MAX_IDENTIFIER = 512
MAX_OVERRIDES = 10_000  # per policy: the cache holds them all in every limiter process
WILDCARD = "*"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PolicyMode(enum.StrEnum):
    ENFORCE = "enforce"  # a denial is answered
    SHADOW = "shadow"  # answered allowed; the would-be denial is recorded


class PolicyWindow(NamedTuple):
    """``limit`` requests per ``window`` seconds."""

    limit: int
    window: int


@dataclass(frozen=True, slots=True)
class Rule:
    """What a policy or an override sets: windows in ascending order of ``window``."""

    limits: tuple[PolicyWindow, ...]
    algorithm: Algorithm | None = None
    mode: PolicyMode | None = None

    def public(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "limits": [{"limit": w.limit, "window": w.window} for w in self.limits]
        }
        if self.algorithm is not None:
            body["algorithm"] = self.algorithm.value
        if self.mode is not None:
            body["mode"] = self.mode.value
        return body


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    rule: Rule
    updated_at: float = 0.0

    def public(self) -> dict[str, Any]:
        return {"name": self.name, **self.rule.public(), "updated_at": self.updated_at}


@dataclass(frozen=True, slots=True)
class Override:
    policy: str
    identifier: str  # exact, or a prefix followed by WILDCARD
    rule: Rule
    updated_at: float = 0.0

    def public(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "identifier": self.identifier,
            **self.rule.public(),
            "updated_at": self.updated_at,
        }


class Resolved(NamedTuple):
    """What applies to one identifier: the policy's windows, or an override's.  The fields
    after ``override`` are derived (``compiled``), so that a check by policy builds nothing
    but its ``Check``."""

    policy: str
    limits: tuple[PolicyWindow, ...]
    algorithm: Algorithm | None
    mode: PolicyMode
    override: str | None  # the identifier pattern of the override that matched
    # every window as (limit, window_ms) when there are several, else ()
    windows_ms: tuple[tuple[int, int], ...] = ()
    shadow: bool = False
    header: bytes = b""  # the RateLimit-Policy value: every window
    items: tuple[bytes, ...] = ()  # each window's name in the RateLimit header


def compiled(resolved: Resolved) -> Resolved:
    """``resolved`` with its derived fields filled in."""
    name, limits = resolved.policy.encode(), resolved.limits
    if len(limits) == 1:
        items: tuple[bytes, ...] = (name,)
        header = b'"%s";q=%d;w=%d' % (name, limits[0].limit, limits[0].window)
    else:
        items = tuple(b"%s-%d" % (name, w.window) for w in limits)
        header = b", ".join(
            b'"%s";q=%d;w=%d' % (item, w.limit, w.window)
            for item, w in zip(items, limits, strict=True)
        )
    return resolved._replace(
        windows_ms=tuple((w.limit, w.window * 1000) for w in limits) if len(limits) > 1 else (),
        shadow=resolved.mode is PolicyMode.SHADOW,
        header=header,
        items=items,
    )


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidInput(
            f"policy name {str(name)[:80]!r} must be 1-{MAX_POLICY_NAME} letters, digits, "
            "'_', '.' or '-', starting with a letter or digit"
        )
    return name


def check_identifier(identifier: object) -> str:
    if not isinstance(identifier, str) or not 1 <= len(identifier) <= MAX_IDENTIFIER:
        raise InvalidInput(f"override identifier must be 1-{MAX_IDENTIFIER} characters")
    if WILDCARD in identifier[:-1]:
        raise InvalidInput(
            f"override identifier {identifier[:80]!r}: '*' may only end it (a prefix wildcard)"
        )
    return identifier


def _whole(value: object, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"`{field}` must be a whole number, not {value!r}")
    if not low <= value <= high:
        raise InvalidInput(f"`{field}` = {value} is out of range: {low}..{high}")
    return value


def parse_rule(body: object, where: str = "$") -> Rule:
    """The rule in a JSON/YAML object; InvalidInput naming the field (a JSON path)."""
    if not isinstance(body, Mapping):
        raise InvalidInput(f"`{where}` must be an object with `limits`")
    unknown = set(body) - {"limits", "algorithm", "mode"}
    if unknown:
        raise InvalidInput(f"`{where}.{sorted(unknown)[0]}` is not a field of a policy")
    limits = body.get("limits")
    if not isinstance(limits, list) or not 1 <= len(limits) <= MAX_WINDOWS:
        raise InvalidInput(f"`{where}.limits` must be a list of 1-{MAX_WINDOWS} windows")
    windows: list[PolicyWindow] = []
    for index, item in enumerate(limits):
        at = f"{where}.limits[{index}]"
        if not isinstance(item, Mapping) or set(item) != {"limit", "window"}:
            raise InvalidInput(f"`{at}` must be an object with `limit` and `window` only")
        limit = _whole(item["limit"], f"{at}.limit", 1, MAX_LIMIT)
        window = _whole(item["window"], f"{at}.window", 1, MAX_WINDOW_SECONDS)
        if limit * window > MAX_LIMIT_WINDOW:
            raise InvalidInput(
                f"`{at}`: limit × window = {limit * window} exceeds {MAX_LIMIT_WINDOW}"
            )
        if any(w.window == window for w in windows):
            raise InvalidInput(f"`{at}.window`: {window} s is already a window of this policy")
        windows.append(PolicyWindow(limit, window))
    algorithm = body.get("algorithm")
    mode = body.get("mode")
    try:
        parsed_algorithm = None if algorithm is None else Algorithm(algorithm)
    except ValueError:
        names = ", ".join(a.value for a in Algorithm)
        raise InvalidInput(f"`{where}.algorithm` {algorithm!r} is not one of {names}") from None
    try:
        parsed_mode = None if mode is None else PolicyMode(mode)
    except ValueError:
        raise InvalidInput(f"`{where}.mode` {mode!r} is not one of enforce, shadow") from None
    return Rule(tuple(sorted(windows, key=lambda w: w.window)), parsed_algorithm, parsed_mode)


def rule_of(record: Mapping[str, Any]) -> Rule:
    """A stored rule (``Rule.public``'s fields) read back."""
    return Rule(
        tuple(PolicyWindow(int(w["limit"]), int(w["window"])) for w in record["limits"]),
        Algorithm(record["algorithm"]) if record.get("algorithm") else None,
        PolicyMode(record["mode"]) if record.get("mode") else None,
    )


def policy_of(record: Mapping[str, Any]) -> Policy:
    return Policy(str(record["name"]), rule_of(record), float(record.get("updated_at", 0.0)))


def override_of(record: Mapping[str, Any]) -> Override:
    return Override(
        str(record["policy"]),
        str(record["identifier"]),
        rule_of(record),
        float(record.get("updated_at", 0.0)),
    )


class Overrides:
    """A policy's overrides, indexed for ``match``: a dict of the exact identifiers and the
    wildcard prefixes longest first (a policy has few wildcards; exact ones may be many)."""

    __slots__ = ("_resolved", "exact", "prefixes")

    def __init__(self, overrides: list[Override]):
        # what ``resolve`` made of each override (None: the policy itself), kept with the
        # policy it was made for: checks build nothing per request
        self._resolved: dict[str | None, tuple[Policy, Resolved]] = {}
        self.exact: dict[str, Override] = {}
        prefixes: list[tuple[str, Override]] = []
        for override in overrides:
            if override.identifier.endswith(WILDCARD):
                prefixes.append((override.identifier[:-1], override))
            else:
                self.exact[override.identifier] = override
        self.prefixes = sorted(prefixes, key=lambda item: -len(item[0]))

    def match(self, identifier: str) -> Override | None:
        """The most specific override of ``identifier``: exact, else the longest prefix."""
        found = self.exact.get(identifier)
        if found is not None or not self.prefixes:
            return found
        for prefix, override in self.prefixes:
            if identifier.startswith(prefix):
                return override
        return None

    def resolved(self, policy: Policy, override: Override | None) -> Resolved:
        """What applies under ``policy`` when ``override`` (of this index, or None) matched."""
        key = None if override is None else override.identifier
        kept = self._resolved.get(key)
        if kept is not None and kept[0] is policy:
            return kept[1]
        rule = policy.rule
        if override is None:
            made = Resolved(policy.name, rule.limits, rule.algorithm,
                            rule.mode or PolicyMode.ENFORCE, None)  # fmt: skip
        else:
            own = override.rule
            made = Resolved(
                policy.name,
                own.limits,
                own.algorithm or rule.algorithm,
                own.mode or rule.mode or PolicyMode.ENFORCE,
                override.identifier,
            )
        made = compiled(made)
        self._resolved[key] = (policy, made)
        return made

    def all(self) -> list[Override]:
        items = [*self.exact.values(), *(override for _, override in self.prefixes)]
        return sorted(items, key=lambda o: o.identifier)


def resolve(policy: Policy, overrides: Overrides, identifier: str) -> Resolved:
    """What applies to ``identifier`` under ``policy``: its most specific override's
    windows (with the policy's algorithm and mode unless the override sets its own), else
    the policy's own."""
    return overrides.resolved(policy, overrides.match(identifier))
