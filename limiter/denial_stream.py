"""The denial cache's decisions into the embedded decision stream, each exactly once.

In the embedded deployment the check script appends every decision it makes to the stream
in the same round trip; a decision the denial cache answers makes no round trip, so it is
handed here.  ``record`` encodes the decisions of one request (as the check script would
have) and queues them in memory; a task appends what is queued every ``interval`` as one
stream entry (one XADD, as the check script writes one per call) with one call of the
outage replay script (``limiter.outage.replay``), which keeps this run's high-water mark in
Redis: a call that fails, or whose reply is lost, is sent again and appends nothing twice.

While Redis does not answer the cache is not asked (``FailoverDecider``), so little can
queue up; what is still queued at shutdown, and what comes beyond ``max_pending`` queued entries,
is handed to the outage recorder (the disk spool) when there is one.  (Only a shutdown
while an append is in flight, its reply never seen, can then count a decision twice.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from limiter.algorithms import Outcome
from limiter.errors import StoreUnavailable
from limiter.failover import OutageLog
from limiter.outage import records
from limiter.outage.records import SpooledEntry
from limiter.outage.replay import StreamReplay
from limiter.store.base import Check
from stream.cancellation import pause

log = logging.getLogger("ratewatch.limiter")

INTERVAL = 0.01  # seconds between appends: the stream lags the cached decisions this much
MAX_PENDING = 100_000  # requests kept in memory while appends fail
CHUNK_REQUESTS = 1000  # requests per stream entry: Redis is busy for about a millisecond
RETRY_MAX = 2.0


class _Pending:
    """One request's cached decisions: their time, encoded, and as they are (kept to hand
    over to the outage recorder)."""

    __slots__ = ("checks", "decisions", "outcomes", "ts_ms")

    def __init__(
        self, ts_ms: int, decisions: bytes, checks: Sequence[Check], outcomes: Sequence[Outcome]
    ):
        self.ts_ms = ts_ms
        self.decisions = decisions  # a JSON array of stream.events.EntryDecision
        self.checks = checks
        self.outcomes = outcomes


class DenialStream:
    def __init__(
        self,
        replay: StreamReplay,
        instance: str,
        *,
        fallback: OutageLog | None = None,
        interval: float = INTERVAL,
        max_pending: int = MAX_PENDING,
        close_timeout: float = 5.0,
    ):
        self._replay = replay
        self._instance = instance
        self._fallback = fallback
        self._interval = interval
        self._max_pending = max_pending
        self._close_timeout = close_timeout
        self._run = records.new_run()
        self._seq = 0
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.appended = 0  # decisions in the stream
        self.handed_over = 0  # decisions given to the outage recorder
        self.dropped = 0  # decisions lost: no recorder to take them

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="ratewatch-denial-stream")

    def record(self, checks: Sequence[Check], outcomes: Sequence[Outcome]) -> None:
        """Queue one request's cached decisions: no I/O, no await."""
        if not checks:
            return
        if len(self._pending) >= self._max_pending:
            # not queued: none of what is queued (maybe in flight) may go both ways
            self._hand_over([_Pending(0, b"", checks, outcomes)])
            return
        decisions = records.entry_decisions(
            checks, outcomes, self._instance, time.perf_counter_ns()
        )
        self._pending.append(_Pending(records.now_ms(), decisions, checks, outcomes))
        if not self._wakeup.is_set():
            self._wakeup.set()

    async def close(self) -> None:
        """Append what is queued (within ``close_timeout``); hand the rest to the recorder."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        task = self._task
        if task is not None:
            await asyncio.wait([task], timeout=self._close_timeout)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._hand_over(self._pending)
        self._pending = []

    async def _loop(self) -> None:
        delay = self._interval
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._closing:
                await asyncio.sleep(self._interval)  # one call for what comes meanwhile
            while self._pending:
                chunk = self._pending[:CHUNK_REQUESTS]
                self._seq += 1
                entry = self._entry(chunk, self._seq)
                while True:  # the same entry, the same sequence number: appended once
                    try:
                        await self._replay.append([entry])
                        break
                    except Exception as exc:  # Redis away, or a bug: neither may stop the task
                        if self._closing:
                            return
                        if isinstance(exc, StoreUnavailable):
                            log.warning("cached denials not appended yet, retrying: %s", exc)
                        else:
                            log.exception("cached denials not appended, retrying")
                        await pause(delay)
                        delay = min(delay * 2, RETRY_MAX)
                delay = self._interval
                del self._pending[: len(chunk)]  # only ever appended to meanwhile
                # in the stream now, by this call or by one whose reply was lost
                self.appended += entry.decisions_count
            if self._closing:
                return

    def _entry(self, chunk: Sequence[_Pending], seq: int) -> SpooledEntry:
        """The requests of ``chunk`` as one stream entry (one XADD), at the first one's
        time: the others were answered at most ``interval`` later."""
        decisions = b"[" + b",".join(p.decisions[1:-1] for p in chunk) + b"]"
        count = sum(len(p.checks) for p in chunk)
        return SpooledEntry(self._run, seq, chunk[0].ts_ms, count, decisions)

    def _hand_over(self, pending: Sequence[_Pending]) -> None:
        for item in pending:
            count = len(item.checks)
            if self._fallback is not None:
                self._fallback.record(item.checks, item.outcomes)
                self.handed_over += count
            else:
                self.dropped += count
        if pending and self._fallback is None:
            log.error("%d cached denials lost: Redis did not take them", self.dropped)
