"""The failure policy: Redis when it answers, the tenant's fail mode when it does not.

After a failed call the store is marked down and no request waits on Redis again until a
background probe (``StoreHealth.watch``) sees it answer; meanwhile ``fail_open`` tenants are
decided by the local in-memory store and ``fail_closed`` tenants are denied.

Where the check script streams every decision it makes (``ratewatch up``), the decisions
answered here are handed to an ``OutageLog`` (``limiter.outage``), which keeps them until
the stream takes them.  Only this path calls it: a check Redis answers costs nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from limiter.algorithms import Outcome, Reason
from limiter.coalescer import Coalescer
from limiter.errors import StoreUnavailable
from limiter.metrics import LimiterMetrics
from limiter.state.tenants import FailMode
from limiter.store.base import Check
from limiter.store.memory import MemoryStore

log = logging.getLogger("ratewatch.limiter")

FAIL_CLOSED_RETRY_MS = 1000


class StoreHealth:
    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        metrics: LimiterMetrics,
        probe_interval: float = 0.25,
    ):
        self._probe = probe
        self._metrics = metrics
        self._interval = probe_interval
        self.up = True
        self.down_since: float | None = None
        self.last_error: str | None = None
        self._recovered = asyncio.Event()
        self._down = asyncio.Event()  # set while Redis is down: only then is it probed
        self._counted: BaseException | None = None
        metrics.redis_up.set(1)

    def mark_down(self, error: BaseException) -> None:
        # every caller of one failed coalesced call reports the same error: count it once
        if error is not self._counted:
            self._counted = error
            self._metrics.redis_errors.inc()
        self.last_error = str(error)
        if self.up:
            log.warning("Redis unreachable, failure policy in effect: %s", error)
            self.up = False
            self.down_since = time.time()
            self._metrics.redis_up.set(0)
            self._recovered.clear()
            self._down.set()

    async def watch(self) -> None:
        """Probe Redis every ``probe_interval`` while it is down; runs for the life of the
        process, asleep while Redis answers."""
        while True:
            await self._down.wait()
            await asyncio.sleep(self._interval)
            try:
                await self._probe()
            except Exception as exc:  # any failure means: still down
                self.last_error = str(exc)
                continue
            log.warning("Redis answers again after %.1fs", time.time() - (self.down_since or 0))
            self.up = True
            self._down.clear()
            self.down_since = None
            self._metrics.redis_up.set(1)
            self._recovered.set()


class OutageLog(Protocol):
    def record(self, checks: Sequence[Check], outcomes: Sequence[Outcome]) -> None:
        """Keep the decisions of one call answered without Redis; must not wait on I/O."""
        ...


class FailoverDecider:
    def __init__(
        self,
        primary: Coalescer,
        fallback: MemoryStore,
        health: StoreHealth,
        outage_log: OutageLog | None = None,
    ):
        self._primary = primary
        self._fallback = fallback
        self._health = health
        self._outage_log = outage_log

    async def decide(self, checks: Sequence[Check], fail_mode: FailMode) -> list[Outcome]:
        if self._health.up:
            try:
                return await self._primary.submit(checks)
            except StoreUnavailable as exc:
                self._health.mark_down(exc)
        if fail_mode is FailMode.CLOSED:
            outcomes = [
                Outcome(False, 0, FAIL_CLOSED_RETRY_MS, FAIL_CLOSED_RETRY_MS, Reason.FAIL_CLOSED)
                for _ in checks
            ]
        else:
            outcomes = []
            for check in checks:
                outcome = self._fallback.decide_one(check)
                if outcome.allowed:
                    outcome = outcome._replace(reason=Reason.FAIL_OPEN)
                outcomes.append(outcome)
        if self._outage_log is not None:
            self._outage_log.record(checks, outcomes)
        return outcomes
