"""RateWatch's limits on its own API, decided by its own check script.

The control plane is limited per tenant (every control-plane request, webhook test pings,
privacy requests) and failed authentication per client address, on every ``/v1`` route.
Each limit is a sliding window decided like a customer's check: a ``Check`` through a
``FailoverDecider`` over a ``RedisStore`` (one EVALSHA of the check script, the in-memory
store while Redis is down).  The counters live under the reserved tenant ``.api``: tenant
names cannot hold a dot (``limiter/state/apikeys.py``), so no customer's key, scan, erasure
or block ever meets them; and the store that decides them appends nothing to the decision
stream, nor are they handed to a decision sink, so they never show up in analytics as a
customer's traffic.

Failed authentication is counted only on the failure path: a request with a valid key
(cached or looked up) costs nothing here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from limiter.algorithms import NO_RETRY, Algorithm
from limiter.errors import ConfigError
from limiter.failover import FailoverDecider
from limiter.state.tenants import FailMode
from limiter.store.base import Check

# no tenant name may hold a dot: this one is nobody's
INTERNAL_TENANT = ".api"

_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*([smh]?)\s*")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
MAX_WINDOW = 86_400


class Limited(StrEnum):
    """What is counted, and the first part of its counter's key."""

    CONTROL = "control"  # per tenant: every authenticated control-plane request
    TEST_PING = "ping"  # per tenant: POST /v1/webhooks/{id}/test
    PRIVACY = "privacy"  # per tenant: POST /v1/privacy/delete and /v1/privacy/summary
    AUTH_FAILURE = "authfail"  # per client address: a request without a valid key


class Rate(NamedTuple):
    limit: int
    window: int  # seconds

    def __str__(self) -> str:
        return f"{self.limit}/{self.window}s"


def parse_rate(text: str) -> Rate | None:
    """``LIMIT/WINDOW`` with the window in seconds, or with a unit (``30/1m``, ``100/1h``);
    ``off`` (None) disables the limit."""
    if text.strip().lower() == "off":
        return None
    match = _RATE.fullmatch(text)
    if match is None:
        raise ConfigError(f"rate {text!r} is not LIMIT/WINDOW (for example 100/1h, 30/60) or off")
    limit, window = int(match[1]), int(match[2]) * _UNITS[match[3]]
    rate = Rate(limit, window)
    check_rate(rate, text)
    return rate


def check_rate(rate: Rate, text: str | None = None) -> None:
    shown = text if text is not None else str(rate)
    if not 1 <= rate.limit <= 1_000_000:
        raise ConfigError(f"rate {shown!r}: the limit must be within 1-1000000")
    if not 1 <= rate.window <= MAX_WINDOW:
        raise ConfigError(f"rate {shown!r}: the window must be within 1s-24h")


DEFAULT_CONTROL = Rate(1200, 60)
DEFAULT_TEST_PING = Rate(100, 3600)
DEFAULT_PRIVACY = Rate(60, 60)
DEFAULT_AUTH_FAILURES = Rate(30, 60)


@dataclass(frozen=True, slots=True)
class ApiLimits:
    """The limits; None disables one.  The defaults leave room for scripts and the console
    and stop floods: a tenant's 1,201st control-plane request within a minute, its 101st
    test ping within an hour, its 61st privacy request within a minute, an address's 31st
    failed authentication within a minute."""

    control: Rate | None = DEFAULT_CONTROL
    test_ping: Rate | None = DEFAULT_TEST_PING
    privacy: Rate | None = DEFAULT_PRIVACY
    auth_failures: Rate | None = DEFAULT_AUTH_FAILURES

    def __post_init__(self) -> None:
        for rate in (self.control, self.test_ping, self.privacy, self.auth_failures):
            if rate is not None:
                check_rate(rate)

    def rate(self, what: Limited) -> Rate | None:
        return {
            Limited.CONTROL: self.control,
            Limited.TEST_PING: self.test_ping,
            Limited.PRIVACY: self.privacy,
            Limited.AUTH_FAILURE: self.auth_failures,
        }[what]


class ApiLimiter:
    """Counts hits of the API's own limits on the check script."""

    def __init__(self, decider: FailoverDecider, limits: ApiLimits):
        self._decider = decider
        self.limits = limits

    async def hit(self, what: Limited, subject: str) -> int | None:
        """Count one hit of ``subject`` (a tenant, a client address) against the limit of
        ``what``: None if it is within the limit (or the limit is off), else the seconds
        to wait before a retry can succeed."""
        rate = self.limits.rate(what)
        if rate is None:
            return None
        check = Check(
            INTERNAL_TENANT,
            f"{what.value}:{subject}",
            Algorithm.SLIDING_WINDOW,
            rate.limit,
            rate.window * 1000,
            1,
        )
        # fail open: while Redis is down each process counts in memory
        outcome = (await self._decider.decide([check], FailMode.OPEN))[0]
        if outcome.allowed:
            return None
        retry_ms = outcome.reset_ms if outcome.retry_ms == NO_RETRY else outcome.retry_ms
        return max(1, -(-retry_ms // 1000))
