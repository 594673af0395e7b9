"""An in-memory store with exactly the Lua scripts' semantics.

Used by library callers without Redis and as the local fallback when Redis is unreachable
(``fail_open``).  State lives in this process only; expired entries are pruned lazily.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from limiter.algorithms import (
    NO_RETRY,
    STEP,
    Algorithm,
    CounterState,
    Outcome,
    Reason,
    deciding_window,
    state_ttl_ms,
    with_window,
)
from limiter.store.base import Check

CounterKey = tuple[str, Algorithm, int, str]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class MemoryStore:
    def __init__(self, clock: Callable[[], int] = wall_clock_ms, max_counters: int = 1_000_000):
        self._clock = clock
        self._max_counters = max_counters
        self._counters: dict[CounterKey, tuple[CounterState, int]] = {}
        self._blocks: dict[tuple[str, str, str], int] = {}

    async def decide(self, checks: Sequence[Check], now_ms: int = 0) -> list[Outcome]:
        return [self.decide_one(check, now_ms) for check in checks]

    def decide_one(self, check: Check, now_ms: int = 0) -> Outcome:
        now = now_ms or self._clock()
        blocked = self._block_ttl(check, now)
        if blocked is not None:
            return Outcome(False, 0, max(blocked, 0), blocked, Reason.BLOCKED)
        if check.windows:
            return self._decide_windows(check, now)
        key: CounterKey = (check.tenant, check.algorithm, check.window_ms, check.key)
        stored = self._counters.get(key)
        state = stored[0] if stored is not None and stored[1] > now else None
        outcome, new_state = STEP[check.algorithm](
            state, now, check.limit, check.window_ms, check.cost
        )
        if new_state is not None:
            self._store(key, new_state, now, state_ttl_ms(check.algorithm, outcome, key[2]))
        return outcome

    def _decide_windows(self, check: Check, now: int) -> Outcome:
        """A policy's windows at once: if any denies, none of them is used."""
        step = STEP[check.algorithm]
        outcomes: list[Outcome] = []
        writes: list[tuple[CounterKey, CounterState, int]] = []
        for limit, window_ms in check.windows:
            key: CounterKey = (check.tenant, check.algorithm, window_ms, check.key)
            stored = self._counters.get(key)
            state = stored[0] if stored is not None and stored[1] > now else None
            outcome, new_state = step(state, now, limit, window_ms, check.cost)
            outcomes.append(outcome)
            if new_state is not None:
                writes.append((key, new_state, state_ttl_ms(check.algorithm, outcome, window_ms)))
        deciding = deciding_window(outcomes)
        if all(outcome.allowed for outcome in outcomes):
            for key, new_state, ttl in writes:
                self._store(key, new_state, now, ttl)
        return with_window(outcomes[deciding], deciding)

    def _store(self, key: CounterKey, state: CounterState, now: int, ttl_ms: int) -> None:
        if len(self._counters) >= self._max_counters:
            self._prune(now)
        self._counters[key] = (state, now + ttl_ms)

    def block(self, tenant: str, scope: str, value: str, ttl_ms: int | None) -> None:
        """Enforce a block for ``ttl_ms`` (None: until removed)."""
        expires = -1 if ttl_ms is None else self._clock() + ttl_ms
        self._blocks[(tenant, scope, value)] = expires

    def block_until(self, tenant: str, scope: str, value: str, expires_ms: int) -> None:
        """Enforce a block until the epoch time ``expires_ms`` of this store's clock."""
        self._blocks[(tenant, scope, value)] = expires_ms

    def unblock(self, tenant: str, scope: str, value: str) -> None:
        self._blocks.pop((tenant, scope, value), None)

    def _block_ttl(self, check: Check, now: int) -> int | None:
        """The longest time left among blocks on the check's subjects (NO_RETRY: forever)."""
        if not self._blocks:
            return None
        longest: int | None = None
        for scope, value in check.block_subjects():
            expires = self._blocks.get((check.tenant, scope, value))
            if expires is None:
                continue
            if expires == -1:
                return NO_RETRY
            if expires > now and (longest is None or expires - now > longest):
                longest = expires - now
        return longest

    def _prune(self, now: int) -> None:
        self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
        if len(self._counters) >= self._max_counters:
            # still full of live counters: forget the oldest half rather than grow unbounded
            keep = list(self._counters.items())[len(self._counters) // 2 :]
            self._counters = dict(keep)
