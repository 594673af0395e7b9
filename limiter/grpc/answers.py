"""Outcomes as a ``RateLimitResponse``: a status per descriptor, the overall code, and the
headers Envoy adds to its response (the same ``RateLimit``/``RateLimit-Policy``/
``Retry-After`` as ``POST /v1/check``).

The overall code is ``OVER_LIMIT`` when any descriptor is over its limit, else ``OK``
(also when no descriptor had a limit).  The headers describe the descriptor that decided:
of the denied ones the one with the longest wait, else the one with the least remaining;
``RateLimit-Policy`` lists every limited descriptor, as the IETF draft allows.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from envoy.config.core.v3.base_pb2 import HeaderValue
from envoy.service.ratelimit.v3.rls_pb2 import RateLimitResponse
from google.protobuf.duration_pb2 import Duration

from limiter.algorithms import NO_RETRY, Outcome

OK = RateLimitResponse.OK
OVER_LIMIT = RateLimitResponse.OVER_LIMIT
_RateLimit = RateLimitResponse.RateLimit
_Status = RateLimitResponse.DescriptorStatus

# a window in seconds -> the response's RateLimit.Unit (the others are answered UNKNOWN,
# with the limit and window spelled in the limit's name)
_UNITS = {
    1: _RateLimit.SECOND,
    60: _RateLimit.MINUTE,
    3600: _RateLimit.HOUR,
    86_400: _RateLimit.DAY,
    7 * 86_400: _RateLimit.WEEK,
    30 * 86_400: _RateLimit.MONTH,
    365 * 86_400: _RateLimit.YEAR,
}


class Verdict(NamedTuple):
    """A limited descriptor's decision: the limit and window (seconds) that decided it,
    what it was answered, the name of the policy it named (None for its own limit) and,
    for a policy of several windows, every (limit, window)."""

    limit: int
    window: int
    outcome: Outcome
    policy: str | None = None
    windows: tuple[tuple[int, int], ...] = ()


def respond(verdicts: list[Verdict | None]) -> Any:
    """The response to a request whose descriptors decided ``verdicts`` (None: the
    descriptor had no limit), in the request's order."""
    statuses = []
    overall = OK
    decided: list[tuple[int, Verdict]] = []
    for index, verdict in enumerate(verdicts):
        if verdict is None:
            statuses.append(_Status(code=OK))
            continue
        decided.append((index, verdict))
        limit, window, outcome, policy, _ = verdict
        unit = _UNITS.get(window)
        if unit is None:
            current = _RateLimit(name=policy or f"{limit} per {window}s", requests_per_unit=limit)
        else:
            current = _RateLimit(name=policy or "", requests_per_unit=limit, unit=unit)
        code = OK if outcome.allowed else OVER_LIMIT
        if not outcome.allowed:
            overall = OVER_LIMIT
        statuses.append(
            _Status(
                code=code,
                current_limit=current,
                limit_remaining=outcome.remaining,
                duration_until_reset=_duration(outcome.reset_ms),
            )
        )
    response = RateLimitResponse(overall_code=overall, statuses=statuses)
    if decided:
        response.response_headers_to_add.extend(_headers(decided))
    return response


def _headers(decided: list[tuple[int, Verdict]]) -> list[Any]:
    single = len(decided) == 1

    def name(index: int, verdict: Verdict) -> str:
        """The item of the window that decided (a policy of several windows names each
        ``<policy>-<window>``, as ``POST /v1/check`` does)."""
        base = verdict.policy or ("default" if single else f"descriptor{index}")
        return f"{base}-{verdict.window}" if verdict.windows else base

    def items(index: int, verdict: Verdict) -> str:
        if not verdict.windows:
            return f'"{name(index, verdict)}";q={verdict.limit};w={verdict.window}'
        return ", ".join(f'"{verdict.policy}-{w}";q={q};w={w}' for q, w in verdict.windows)

    denied = [item for item in decided if not item[1].outcome.allowed]
    if denied:
        index, deciding = max(denied, key=lambda item: _wait_ms(item[1].outcome))
    else:
        index, deciding = min(decided, key=lambda item: item[1].outcome.remaining)
    outcome = deciding.outcome
    headers = [
        HeaderValue(
            key="ratelimit-policy",
            value=", ".join(items(i, v) for i, v in decided),
        ),
        HeaderValue(
            key="ratelimit",
            value=f'"{name(index, deciding)}";r={outcome.remaining};'
            f"t={_ceil_seconds(outcome.reset_ms)}",
        ),
    ]
    if not outcome.allowed and outcome.retry_ms != NO_RETRY:
        # as results.to_result: whole seconds, rounded up, at least one
        headers.append(
            HeaderValue(key="retry-after", value=str(max(1, _ceil_seconds(outcome.retry_ms))))
        )
    return headers


def _wait_ms(outcome: Outcome) -> int:
    """How long a denied descriptor holds the request back: its retry, else (waiting cannot
    help) its reset."""
    return outcome.reset_ms if outcome.retry_ms == NO_RETRY else outcome.retry_ms


def _ceil_seconds(ms: int) -> int:
    return -(-ms // 1000)


def _duration(ms: int) -> Any:
    return Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)
