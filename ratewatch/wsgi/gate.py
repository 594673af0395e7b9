"""The decision on one WSGI request: let it through (adding ``RateLimit`` headers) or answer it.

:class:`RateLimitGate` holds the options the WSGI middleware and the Flask and Django
adapters share; it works on a WSGI ``environ`` (Django's ``request.META`` is one).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ratewatch.client import FAIL_OPEN_REASON, CheckResult, RateWatch
from ratewatch.errors import RateWatchError, ServiceUnavailable
from ratewatch.wsgi.keys import Environ, KeyFunc, client_ip, ip_key

__all__ = ["Answer", "Decision", "LimitsFunc", "RateLimitGate"]

LimitsFunc = Callable[[Environ], tuple[int, int] | str | None]
"""``environ -> (limit, window)``, or the name of a policy, for requests with limits of
their own, else ``None``."""
Rate = tuple[int | None, int | None, str | None]  # limit, window, policy

Headers = list[tuple[str, str]]

_MAX_TEXT = 2048  # the service's limit on `route` and `user_agent`
_PROBLEM_TYPE = "urn:ratewatch:problem:"
log = logging.getLogger("ratewatch.wsgi")


@dataclass(frozen=True, slots=True)
class Answer:
    """A response the gate gives instead of the app's."""

    status: str
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class Decision:
    """``answer`` is ``None`` when the request goes to the app, with ``headers`` added."""

    answer: Answer | None = None
    headers: Headers = field(default_factory=list)


_PASS = Decision()


def _positive(name: str, value: object, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive integer" if minimum else "a non-negative integer"
        raise ValueError(f"{name} must be {kind}, not {value!r}")
    return value


def _excluded(patterns: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    exact: set[str] = set()
    prefixes: list[str] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.startswith("/"):
            raise ValueError(f"exclude entries are paths starting with '/', not {pattern!r}")
        if pattern.endswith("*"):
            prefixes.append(pattern[:-1])
        else:
            exact.add(pattern)
    return frozenset(exact), tuple(prefixes)


def _problem(
    status: str, kind: str, title: str, detail: str, headers: Headers, **extensions: Any
) -> Answer:
    code = int(status.split(" ", 1)[0])
    body = json.dumps(
        {"type": _PROBLEM_TYPE + kind, "title": title, "status": code, "detail": detail}
        | extensions
    ).encode()
    return Answer(
        status,
        [
            ("Content-Type", "application/problem+json"),
            ("Content-Length", str(len(body))),
            *headers,
        ],
        body,
    )


_UNAVAILABLE = _problem(
    "503 Service Unavailable",
    "service-unavailable",
    "Service unavailable",
    "the rate limiter is unavailable",
    [("Retry-After", "1")],
)


class RateLimitGate:
    """Limit requests to ``limit`` per ``window`` seconds, or by the named ``policy`` of
    the tenant (docs/policies.md), per ``key(environ)``.

    ``key`` returns a request's key, or ``None`` to let it through unchecked (default: the
    client IP, :func:`~ratewatch.wsgi.keys.ip_key`).  ``limits(environ)`` may give a
    request ``(limit, window)`` or a policy name of its own.  Paths in ``exclude`` (exact,
    or a prefix ending in ``*``) are never checked.  When no decision can be had (the service is
    unreachable, slow or refuses the client's configuration) the request goes through
    with ``fail_open`` (the default), else it gets a 503; the app never sees the error.
    The ``client`` belongs to the caller, who closes it.
    """

    def __init__(
        self,
        client: RateWatch,
        *,
        limit: int | None = None,
        window: int | None = None,
        key: KeyFunc | None = None,
        limits: LimitsFunc | None = None,
        cost: int = 1,
        algorithm: str | None = None,
        exclude: Iterable[str] = (),
        trust_proxies: bool = False,
        fail_open: bool = True,
        policy: str | None = None,
    ):
        self.client = client
        if policy is not None:
            if limit is not None or window is not None:
                raise ValueError("give limit and window, or a policy, not both")
            if not isinstance(policy, str) or not policy:
                raise ValueError(f"policy must be a policy's name, not {policy!r}")
            self.limit, self.window = None, None
        else:
            self.limit = _positive("limit", limit)
            self.window = _positive("window", window)
        self.policy = policy
        self.cost = _positive("cost", cost, 0)
        if key is not None and not callable(key):
            raise ValueError(f"key must be a function of the environ, not {key!r}")
        if limits is not None and not callable(limits):
            raise ValueError(f"limits must be a function of the environ, not {limits!r}")
        self.key: KeyFunc = key or ip_key(trust_proxies)
        self.limits = limits
        self.algorithm = algorithm
        self._exact, self._prefixes = _excluded(exclude)
        self.trust_proxies = trust_proxies
        self.fail_open = fail_open

    def excluded(self, path: str) -> bool:
        """Whether ``path`` is never checked."""
        return path in self._exact or path.startswith(self._prefixes)

    def decide(self, environ: Environ) -> Decision:
        """Check one request; the app's errors are not caught here, RateWatch's are."""
        path = str(environ.get("PATH_INFO", "")) or "/"
        if self.excluded(path):
            return _PASS
        key = self.key(environ)
        if key is None:
            return _PASS
        limit, window, policy = self._rate(environ)
        try:
            result = self.client.check(
                key,
                limit=limit,
                window=window,
                policy=policy,
                cost=self.cost,
                algorithm=self.algorithm,
                ip=client_ip(environ, self.trust_proxies),
                route=path[:_MAX_TEXT],
                user_agent=str(environ.get("HTTP_USER_AGENT", ""))[:_MAX_TEXT] or None,
            )
        except ServiceUnavailable as error:
            return self._undecided(error)
        except RateWatchError as error:  # a bad API key or limit: the operator's to fix
            log.error("RateWatch refused the check of %r: %s", key, error)
            return self._undecided(error)
        if result.reason == FAIL_OPEN_REASON:  # made up by the client: nothing was counted
            return self._undecided(None)
        headers = self._ratelimit_headers(result, window, policy)
        if result.allowed:
            return Decision(headers=headers)
        return Decision(answer=self._denied(result, window, policy, headers))

    def _rate(self, environ: Environ) -> Rate:
        rate = self.limits(environ) if self.limits is not None else None
        if rate is None:
            return self.limit, self.window, self.policy
        if isinstance(rate, str):
            return None, None, rate
        limit, window = rate
        return _positive("limit", limit), _positive("window", window), None

    def _undecided(self, error: RateWatchError | None) -> Decision:
        if self.fail_open:
            return _PASS
        if error is not None:
            log.warning("RateWatch unavailable, answering 503 (fail closed): %s", error)
        return Decision(answer=_UNAVAILABLE)

    @staticmethod
    def _ratelimit_headers(result: CheckResult, window: int | None, policy: str | None) -> Headers:
        # a policy's windows are the service's: the header names the policy and the limit
        # of the window that decided (the draft's `w` is optional)
        name = policy or "default"
        described = f'"{name}";q={result.limit}' + (f";w={window}" if window else "")
        return [
            ("RateLimit-Policy", described),
            ("RateLimit", f'"{name}";r={result.remaining};t={result.reset_in}'),
        ]

    @staticmethod
    def _denied(
        result: CheckResult, window: int | None, policy: str | None, headers: Headers
    ) -> Answer:
        detail = (
            f"rate limit of {result.limit} per {window}s exceeded ({result.reason})"
            if policy is None
            else f"rate limit of policy {policy} exceeded ({result.reason})"
        )
        extensions: dict[str, Any] = {"reason": result.reason}
        if result.retry_after is not None:
            headers = [*headers, ("Retry-After", str(result.retry_after))]
            detail += f"; retry in {result.retry_after}s"
            extensions["retry_after"] = result.retry_after
        return _problem(
            "429 Too Many Requests",
            "rate-limited",
            "Too many requests",
            detail,
            headers,
            **extensions,
        )
