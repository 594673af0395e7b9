"""The local denial cache: a counter known to be over its limit is denied in process, until
the retry time Redis gave, without a store call.

Why a cached denial is never wrong to give: Redis's denial of a check of cost ``c`` at
instant ``t`` says that, with no other change, no check of cost ``c`` or more on that counter
is allowed before ``t + retry_ms`` (the three algorithms compute ``retry_ms`` as exactly that
instant, ``limiter.algorithms``).  The only other changes a counter sees are allowed checks,
which only add to it, on this limiter or another: they make the denial last longer, never
shorter.  Time alone only lowers a counter, which the retry time already accounts for.  So
until ``t + retry_ms`` a check of the same counter (tenant, key, algorithm, window) at the
same limit with a cost of ``c`` or more is denied by Redis too, and the cache answers it
(``reason`` ``limit``, ``remaining`` 0).  The instant ``t`` is taken on this process's
monotonic clock *before* the call is sent, which is no later than Redis's decision, so
clock offsets between hosts do not matter.

What is never cached: allowed checks, blocks (``blocked``, a mechanism of its own), a cost
above the limit (``cost_exceeds_limit``: waiting cannot help), the failure policy's answers
and denials without a retry time.  A check with a smaller cost than the cached denial's (a
cost-0 read of a token bucket is always allowed), or at another limit, asks Redis.

Where a cached denial may outlast Redis's (documented in docs/performance.md): a counter
an operator resets, and a token bucket checked at several limits on one key and window by
other limiters (a higher limit refills the shared bucket faster).  On one limiter, an allowed
check at another limit drops the entry.

The cache is bounded in entries (least recently used evicted first); expired entries go when
looked up or evicted.  Every operation is O(1).  Counts are plain integers, moved into the
Prometheus metrics by ``LimiterMetrics.flush`` (``DenialCacheMetrics``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol

from limiter.algorithms import Algorithm, Outcome, Reason, window_of, with_window
from limiter.store.base import Check

Clock = Callable[[], int]
Submit = Callable[[Sequence[Check]], Awaitable[list[Outcome]]]

# the bound's most: an entry takes about 330 bytes besides its key (docs/performance.md)
MAX_ENTRIES = 10_000_000


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


# the counter a denial is about: tenant, key, algorithm, window (the Redis counter's name)
_Counter = tuple[str, str, Algorithm, int]


class _Denial(NamedTuple):
    limit: int
    cost: int  # the denied cost: a check of this cost or more is denied too
    until: int  # ms, this process's monotonic clock: denied before this instant
    reset_at: int  # ms, same clock: when the window resets (sliding, fixed) or the bucket fills


class DenialCache:
    def __init__(self, max_entries: int, clock: Clock = monotonic_ms):
        if not 1 <= max_entries <= MAX_ENTRIES:
            raise ValueError(f"denial cache entries {max_entries!r} not within 1-{MAX_ENTRIES}")
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[_Counter, _Denial] = OrderedDict()
        # since the process started; read by the metrics' flush
        self.hits = 0
        self.misses = 0
        self.stores = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(
        self,
        tenant: str,
        key: str,
        algorithm: Algorithm,
        limit: int,
        window_ms: int,
        cost: int,
        now: int,
        count_miss: bool = True,
    ) -> Outcome | None:
        """The denial of this check if one is known at ``now``, else None.  A check of
        several windows asks per window: any window denied denies the check.  A miss is
        counted unless ``count_miss`` is false (a lookup the store call's own follows)."""
        counter = (tenant, key, algorithm, window_ms)
        denial = self._entries.get(counter)
        if denial is None:
            self.misses += count_miss
            return None
        until = denial.until
        if now >= until:
            del self._entries[counter]
            self.misses += count_miss
            return None
        if cost < denial.cost or cost > limit or limit != denial.limit:
            self.misses += count_miss
            return None
        self._entries.move_to_end(counter)
        self.hits += 1
        retry = until - now
        reset = denial.reset_at - now
        if algorithm is Algorithm.SLIDING_WINDOW:
            if reset <= 0:  # the window it knew ended: the reset is the current one's end
                reset = reset % window_ms or window_ms
        elif reset < retry:
            reset = retry
        return Outcome(False, 0, reset, retry, Reason.LIMIT)

    def store(
        self,
        tenant: str,
        key: str,
        algorithm: Algorithm,
        limit: int,
        window_ms: int,
        cost: int,
        outcome: Outcome,
        sent: int,
    ) -> None:
        """Learn from Redis's answer to a check sent at ``sent`` (this clock)."""
        if outcome.reason is not Reason.LIMIT:
            if outcome.allowed:
                entries = self._entries
                counter = (tenant, key, algorithm, window_ms)
                denial = entries.get(counter)
                # another limit on the same counter was allowed: a token bucket refilled
                # at that rate, the denial cannot be trusted any more
                if denial is not None and denial.limit != limit:
                    del entries[counter]
            return
        retry = outcome.retry_ms
        if retry <= 0 or cost > limit:
            return
        entries = self._entries
        counter = (tenant, key, algorithm, window_ms)
        entries[counter] = _Denial(limit, cost, sent + retry, sent + outcome.reset_ms)
        entries.move_to_end(counter)
        self.stores += 1
        if len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evictions += 1

    def answer(self, check: Check, now: int, count_miss: bool = True) -> Outcome | None:
        """The cached denial of ``check``, if one of its windows is known to deny it."""
        if len(check.windows) < 2:
            return self.lookup(
                check.tenant, check.key, check.algorithm, check.limit, check.window_ms,
                check.cost, now, count_miss,
            )  # fmt: skip
        if not self._entries:  # nothing known: a miss per window, as the lookups count
            self.misses += len(check.windows) * count_miss
            return None
        # a policy's windows are decided together: one window Redis would deny denies all
        for index, (limit, window_ms) in enumerate(check.windows):
            hit = self.lookup(
                check.tenant, check.key, check.algorithm, limit, window_ms, check.cost, now,
                count_miss,
            )  # fmt: skip
            if hit is not None:
                return with_window(hit, index)
        return None

    def learn(self, check: Check, outcome: Outcome, sent: int) -> None:
        if len(check.windows) < 2:
            self.store(
                check.tenant, check.key, check.algorithm, check.limit, check.window_ms,
                check.cost, outcome, sent,
            )  # fmt: skip
            return
        if outcome.allowed:  # every window allowed it: each window's counter learns that
            if self._entries:  # (an allow only forgets a denial of another limit: none here)
                for limit, window_ms in check.windows:
                    self.store(
                        check.tenant, check.key, check.algorithm, limit, window_ms,
                        check.cost, outcome, sent,
                    )  # fmt: skip
            return
        # a denial is the deciding window's; the other windows' counters are unknown
        limit, window_ms = check.windows[window_of(outcome)]
        self.store(
            check.tenant, check.key, check.algorithm, limit, window_ms, check.cost, outcome, sent
        )


class DenialLog(Protocol):
    def record(self, checks: Sequence[Check], outcomes: Sequence[Outcome]) -> None:
        """Take the decisions the cache answered, where the store would have streamed them
        itself (the embedded stream); must not wait on I/O."""
        ...


class CachedSubmit:
    """The store's ``submit`` with the denial cache in front: the checks the cache denies
    are answered here, the others go to the store (in their order), and the store's denials
    are learned.  Used only while Redis answers (``FailoverDecider``): a failed call fails
    whole, cached answers included, and the failure policy answers it."""

    def __init__(self, cache: DenialCache, submit: Submit, log: DenialLog | None = None):
        self._cache = cache
        self._submit = submit
        self._log = log

    def cached(self, check: Check, now: int | None = None) -> Outcome | None:
        """The cache's answer to ``check`` (recorded, as a cached answer of ``submit`` is),
        or None: then ``submit`` asks the store.  A miss here is not counted: the
        ``submit`` that follows looks the check up again and counts it, once."""
        cache = self._cache
        hit = cache.answer(check, cache.clock() if now is None else now, count_miss=False)
        if hit is not None and self._log is not None:
            self._log.record([check], [hit])
        return hit

    async def submit(self, checks: Sequence[Check]) -> list[Outcome]:
        cache = self._cache
        sent = cache.clock()
        if len(checks) == 1:
            check = checks[0]
            hit = cache.answer(check, sent)
            if hit is not None:
                if self._log is not None:
                    self._log.record(checks, [hit])
                return [hit]
            answer = await self._submit(checks)
            cache.learn(check, answer[0], sent)
            return answer
        hits = [cache.answer(check, sent) for check in checks]
        misses = [check for check, hit in zip(checks, hits, strict=True) if hit is None]
        answered = await self._submit(misses) if misses else []
        for check, outcome in zip(misses, answered, strict=True):
            cache.learn(check, outcome, sent)
        if len(misses) == len(checks):
            return answered
        outcomes: list[Outcome] = []
        cached: list[Outcome] = []
        cached_checks: list[Check] = []
        answers = iter(answered)
        for check, hit in zip(checks, hits, strict=True):
            if hit is None:
                outcomes.append(next(answers))
            else:
                outcomes.append(hit)
                cached.append(hit)
                cached_checks.append(check)
        if self._log is not None:
            self._log.record(cached_checks, cached)
        return outcomes
