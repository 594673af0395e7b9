"""The outage recorder: what the failure policy answers is kept on disk, then streamed.

``record`` is called by ``FailoverDecider`` with the decisions of one call it answered
without Redis (``fail_open``, a local ``limit``, ``fail_closed``); a call that Redis
answers never reaches it, so the check path pays nothing while Redis is up.  It encodes the
call's decisions as one stream entry and queues it in the spool (memory only, on the loop).

A task of its own fsyncs the queue in batches (every ``flush_interval`` at most) and, while
Redis answers, replays the spool in order through ``StreamReplay``, acknowledging each chunk
once Redis has it.  What a run leaves in the spool (Redis still away at shutdown, a crash)
is replayed by the next run.  A full spool drops the decision, counts it and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from limiter.algorithms import Outcome
from limiter.errors import StoreUnavailable
from limiter.failover import StoreHealth
from limiter.metrics import LimiterMetrics
from limiter.outage import records
from limiter.outage.records import SpooledEntry
from limiter.outage.replay import StreamReplay
from limiter.sinks.spool import Spool
from limiter.store.base import Check
from stream.cancellation import pause

log = logging.getLogger("ratewatch.limiter")

T = TypeVar("T")

CHUNK_BYTES = 256 * 1024  # a replay call's most bytes: Redis is busy for about a millisecond
DROP_LOG_INTERVAL = 10.0
RETRY_MAX = 2.0


class OutageRecorder:
    def __init__(
        self,
        spool_dir: Path,
        replay: StreamReplay,
        health: StoreHealth,
        metrics: LimiterMetrics,
        instance: str,
        *,
        max_bytes: int = 1 << 30,
        flush_interval: float = 0.05,
        retry_interval: float = 0.05,
        close_timeout: float = 5.0,
    ):
        self.spool = Spool(spool_dir, max_bytes)
        self._replay = replay
        self._health = health
        self._metrics = metrics
        self._instance = instance
        self._flush_interval = flush_interval
        self._retry = retry_interval
        self._close_timeout = close_timeout
        self._run_id = records.new_run()
        self._seq = 0
        self._wakeup = asyncio.Event()
        self._io = ThreadPoolExecutor(1, thread_name_prefix="ratewatch-outage-spool")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_flush = 0.0
        self._last_error: str | None = None
        self._dropped = 0  # decisions
        self._spool_drops_seen = 0  # records the spool counted as dropped, accounted for
        self._spooled = 0
        self._replayed = 0
        self._drop_logged = -DROP_LOG_INTERVAL
        metrics.outage_spool_entries.set_function(lambda: self.spool.events)
        metrics.outage_spool_bytes.set_function(lambda: self.spool.size)

    async def start(self) -> None:
        """Open the spool (what an earlier run left is replayed first) and start the task."""
        await self._run_io(self.spool.open)
        self._task = asyncio.create_task(self._loop(), name="ratewatch-outage-spool")

    def record(self, checks: Sequence[Check], outcomes: Sequence[Outcome]) -> None:
        """Keep the decisions of one call the failure policy answered: no I/O, no await."""
        if not checks:
            return
        count = len(checks)
        if self._closing and self._task is not None and self._task.done():
            self._drop(count, "answered after the outage spool was closed")
            return
        self._seq += 1
        payload = records.encode(
            self._run_id,
            self._seq,
            records.now_ms(),
            count,
            records.entry_decisions(checks, outcomes, self._instance, time.perf_counter_ns()),
        )
        if not self.spool.append(payload):
            self._spool_drops_seen += 1  # the spool counts the record; this, its decisions
            self._drop(count, "the outage spool is full")
            return
        self._spooled += count
        self._metrics.outage_spooled.inc(count)
        if not self._wakeup.is_set():
            self._wakeup.set()

    async def close(self) -> None:
        """Write what is queued and replay what Redis takes within ``close_timeout``; the
        rest stays on disk for the next run."""
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
        try:
            await self._run_io(self.spool.close)
        except OSError as exc:
            log.error("outage spool: could not write it at shutdown: %s", exc)
            self._last_error = str(exc)
        self._count_spool_drops()
        self._io.shutdown(wait=True)
        if self.spool.events:
            log.warning(
                "outage spool: %d entries stay in %s, appended to the stream on the next start",
                self.spool.events,
                self.spool.directory,
            )

    def status(self) -> dict[str, object]:
        """The spool as /health/detailed shows it."""
        waiting = "replaying" if self._health.up else "spooling"
        return {
            "status": waiting if self.spool.events else "up",
            "directory": str(self.spool.directory),
            "entries": self.spool.events,
            "unwritten": self.spool.pending,  # entries not yet fsync'd
            "bytes": self.spool.size,
            "spooled_decisions": self._spooled,
            "replayed_decisions": self._replayed,
            "dropped_decisions": self._dropped,
            "last_error": self._last_error,
        }

    # -- the task --------------------------------------------------------------------

    async def _loop(self) -> None:
        delay = self._retry
        while True:
            self._wakeup.clear()
            try:
                if self.spool.pending:
                    if not self._closing:  # fsync in batches, not per request
                        await asyncio.sleep(
                            self._last_flush + self._flush_interval - time.monotonic()
                        )
                    await self._flush()
                if self.spool.events and self._health.up:
                    while await self._replay_chunk():
                        pass
                    delay = self._retry
            except (StoreUnavailable, OSError) as exc:
                self._last_error = str(exc)
                if self._closing:
                    return
                await pause(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except Exception as exc:  # a bug must not stop the recorder: retry
                log.exception("outage spool: replay failed")
                self._last_error = str(exc)
                await pause(RETRY_MAX)
                continue
            if self._closing and not self.spool.pending:
                return
            timeout: float | None = None
            if self.spool.pending:
                timeout = 0
            elif self.spool.events:  # waiting for Redis to answer again
                timeout = 0.25
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _flush(self) -> None:
        self._last_flush = time.monotonic()
        try:
            await self._run_io(self.spool.flush)
        except OSError as exc:
            log.error("outage spool: write failed, decisions lost: %s", exc)
            raise
        finally:
            self._count_spool_drops()

    async def _replay_chunk(self) -> bool:
        """Append the next durable chunk to the stream and acknowledge it; False if none."""
        chunk = await self._run_io(self.spool.read, CHUNK_BYTES)
        if not chunk.records:
            return False
        entries = [records.decode(payload) for payload in chunk.records]
        start = 0
        while start < len(entries):  # a chunk may hold an earlier run's records, then ours
            run = entries[start].run
            end = start
            while end < len(entries) and entries[end].run == run:
                end += 1
            await self._append(entries[start:end])
            start = end
        await self._run_io(self.spool.ack, chunk.end, len(chunk.records))
        self._last_error = None
        return True

    async def _append(self, entries: Sequence[SpooledEntry]) -> None:
        appended = await self._replay.append(entries)
        decisions = sum(entry.decisions_count for entry in entries if entry.seq > appended.before)
        self._replayed += decisions
        self._metrics.outage_replayed.inc(decisions)
        skipped = len(entries) - appended.entries
        if skipped:
            log.warning(
                "outage spool: %d entries of run %s were in the stream already (appended "
                "before a crash or a lost reply); skipped",
                skipped,
                entries[0].run_id,
            )

    def _drop(self, count: int, why: str) -> None:
        self._dropped += count
        self._metrics.outage_dropped.inc(count)
        now = time.monotonic()
        if now - self._drop_logged >= DROP_LOG_INTERVAL:
            self._drop_logged = now
            log.error(
                "outage spool %s: decisions lost (%s; %d of %d bytes used): %d so far",
                self.spool.directory,
                why,
                self.spool.size,
                self.spool.max_bytes,
                self._dropped,
            )

    def _count_spool_drops(self) -> None:
        """Records the spool dropped on a disk error (counted in records, not decisions)."""
        lost = self.spool.dropped - self._spool_drops_seen
        if lost > 0:
            self._spool_drops_seen += lost
            self._drop(lost, "the disk failed")

    async def _run_io(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, function, *args)
