"""The failure policy: Redis when it answers, the tenant's fail mode when it does not.

A failed call is that call's failure, not a verdict on Redis: the checks it carried are
answered by the policy, and the store is declared down only on health evidence, either a
failed probe (a PING with its own timeout, sent at once after a failed call) or
``failures_to_down`` failed calls in a row with no call answered between them.  The local
store holds a copy of the active blocks (``limiter.state.block_mirror``), so the policy's
answers still deny blocked subjects.

Once the store is declared down no request waits on Redis again until a
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
from limiter.coalescer import Decide
from limiter.denial_cache import CachedSubmit
from limiter.errors import StoreUnavailable
from limiter.metrics import LimiterMetrics
from limiter.state.tenants import FailMode
from limiter.store.base import Check
from limiter.store.memory import MemoryStore
from stream.cancellation import raise_if_cancelled

log = logging.getLogger("ratewatch.limiter")

FAIL_CLOSED_RETRY_MS = 1000


class StoreHealth:
    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        metrics: LimiterMetrics,
        probe_interval: float = 0.25,
        *,
        probe_timeout: float = 0.5,
        failures_to_down: int = 3,
    ):
        self._probe = probe
        self._metrics = metrics
        self._interval = probe_interval
        self._probe_timeout = probe_timeout
        self._failures_to_down = failures_to_down
        self.up = True
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.failures = 0  # failed calls since the last answered one
        self.probes = 0  # probes completed, answered or not
        self._recovered = asyncio.Event()
        self._suspect = asyncio.Event()  # a call failed: probe now
        metrics.redis_up.set(1)

    def guard(self, decide: Decide) -> Decide:
        """``decide``, reporting each call's outcome here: one call, one verdict."""

        async def guarded(checks: Sequence[Check]) -> list[Outcome]:
            try:
                outcomes = await decide(checks)
            except StoreUnavailable as exc:
                self.call_failed(exc)
                raise
            self.failures = 0
            return outcomes

        return guarded

    def call_failed(self, error: BaseException) -> None:
        """One call failed: its checks get the policy; the store is probed at once, and
        marked down after ``failures_to_down`` failures in a row."""
        self._metrics.redis_errors.inc()
        self.last_error = str(error)
        self.failures += 1
        if self.failures >= self._failures_to_down:
            self._go_down(error)
        elif self.up:
            self._suspect.set()

    def mark_down(self, error: BaseException) -> None:
        """The store is down (a failed probe, or an operator's word): counted as an error."""
        self._metrics.redis_errors.inc()
        self.last_error = str(error)
        self._go_down(error)

    def _go_down(self, error: BaseException) -> None:
        if self.up:
            log.warning("Redis unreachable, failure policy in effect: %s", error)
            self.up = False
            self.down_since = time.time()
            self._metrics.redis_up.set(0)
            self._recovered.clear()
            self._suspect.set()  # the watcher now probes until the store answers

    async def probe(self) -> bool:
        """One PING within the probe's own timeout; marks the store up or down by it."""
        try:
            # not wait_for: on Python 3.11 it swallows a cancellation that arrives as the
            # probe returns, and the watcher, probing every interval, would outlive its stop
            async with asyncio.timeout(self._probe_timeout):
                await self._probe()
        except Exception as exc:  # any failure means: not answering
            self.probes += 1
            # the calls' errors are counted; a probe's are not, a down store would add one
            # per interval
            self.last_error = str(exc) or f"health probe failed: {exc!r}"
            self._go_down(exc)
            return False
        self.probes += 1
        if not self.up:
            log.warning("Redis answers again after %.1fs", time.time() - (self.down_since or 0))
            self.up = True
            self.down_since = None
            self.failures = 0
            self._metrics.redis_up.set(1)
            self._recovered.set()
        return True

    async def watch(self) -> None:
        """Probe Redis at once after a failed call, and every ``probe_interval`` while it is
        down (first after one interval when failed calls declared it down, so that a store
        failing calls is spared them that long); runs for the life of the process."""
        while True:
            raise_if_cancelled()  # a probe may have swallowed the stop
            if self.up:
                await self._suspect.wait()
                self._suspect.clear()
                if self.up:
                    await self.probe()
                    continue
            await asyncio.sleep(self._interval)
            self._suspect.clear()
            await self.probe()


class OutageLog(Protocol):
    def record(self, checks: Sequence[Check], outcomes: Sequence[Outcome]) -> None:
        """Keep the decisions of one call answered without Redis; must not wait on I/O."""
        ...


class Primary(Protocol):
    """Where checks go while Redis answers: the ``Coalescer``, or the denial cache in front
    of it (``limiter.denial_cache.CachedSubmit``)."""

    def submit(self, checks: Sequence[Check]) -> Awaitable[list[Outcome]]: ...


class FailoverDecider:
    def __init__(
        self,
        primary: Primary,
        fallback: MemoryStore,
        health: StoreHealth,
        outage_log: OutageLog | None = None,
    ):
        self._primary = primary
        self._fallback = fallback
        self._health = health
        self._outage_log = outage_log
        self._cached = primary.cached if isinstance(primary, CachedSubmit) else None

    def cached(self, check: Check) -> Outcome | None:
        """The answer to ``check`` the local denial cache gives without a store call, while
        Redis answers (the failure policy's time asks no cache); None: ``decide`` it."""
        cached = self._cached
        if cached is None or not self._health.up:
            return None
        return cached(check)

    async def decide(self, checks: Sequence[Check], fail_mode: FailMode) -> list[Outcome]:
        if self._health.up:
            try:
                return await self._primary.submit(checks)
            except StoreUnavailable:
                pass  # this call's failure: its checks get the policy (StoreHealth judges)
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
