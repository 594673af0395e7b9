"""A decision in the API's units, and the one conversion of an ``Outcome`` into it.

The store decides in milliseconds (``Outcome``); callers get whole seconds, rounded up so
that a caller never retries too early.  The library (``Limiter.check``) and the check API
(``POST /v1/check``, ``/v1/batch``) answer with this same struct, so both say the same
thing for the same outcome, and the check API encodes it as it is.
"""

from __future__ import annotations

import msgspec

from limiter.algorithms import NO_RETRY, REASON_LABELS, Outcome


class CheckResult(msgspec.Struct, kw_only=True, frozen=True):
    """The answer to one check.  `reset_in`: seconds until the limit is whole again;
    `retry_after`: seconds to wait before a retry can succeed, null when allowed or when
    waiting cannot help (a cost above the limit); `reason`: `ok`, `limit`, `blocked`,
    `cost_exceeds_limit`, `fail_open` or `fail_closed`."""

    allowed: bool
    remaining: int
    reset_in: int
    retry_after: int | None
    limit: int
    reason: str


def to_result(outcome: Outcome, limit: int) -> CheckResult:
    """``outcome`` of a check against ``limit``, in the API's units.

    Seconds are rounded up (``algorithms.ceil_seconds``, inlined: this runs for every
    check of a batch); ``retry_after`` is ``algorithms.retry_after_seconds``."""
    allowed, remaining, reset_ms, retry_ms, reason = outcome
    return CheckResult(
        allowed=allowed,
        remaining=remaining,
        reset_in=-(-reset_ms // 1000),
        retry_after=None if allowed or retry_ms == NO_RETRY else max(1, -(-retry_ms // 1000)),
        limit=limit,
        reason=REASON_LABELS[reason],
    )
