"""The sink's side of the disk spool: its file work on one thread of its own, its counts in
the metrics, and a loud log when events are dropped (the one loss the sink allows)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from limiter.metrics import LimiterMetrics
from limiter.sinks.events import Record, pack
from limiter.sinks.spool import Chunk, Position, Spool

log = logging.getLogger("ratewatch.stream")

T = TypeVar("T")

DROP_LOG_INTERVAL = 10.0


class Spooler:
    def __init__(self, directory: Path, max_bytes: int, metrics: LimiterMetrics):
        self.spool = Spool(directory, max_bytes)
        self._metrics = metrics
        # one thread: the spool's file work is serial, and never on the event loop
        self._io = ThreadPoolExecutor(1, thread_name_prefix="ratewatch-spool")
        self._dropped_seen = 0
        self._lost = 0  # dropped outside the spool (emitted after close)
        self._drop_logged = -DROP_LOG_INTERVAL
        metrics.stream_spool_bytes.set_function(lambda: self.spool.size)
        metrics.stream_spool_events.set_function(lambda: self.spool.events)

    @property
    def events(self) -> int:
        return self.spool.events

    @property
    def pending(self) -> int:
        return self.spool.pending

    @property
    def in_doubt(self) -> int:
        """How many records from the head of the spool were sent already, perhaps delivered:
        a replay sends them with the ``ratewatch-resent`` header."""
        return self.spool.in_doubt

    def mark_in_doubt(self, count: int) -> None:
        """The first ``count`` records of the spool were sent (kept on disk by the next flush
        or ack, so that the next run knows too)."""
        self.spool.mark_in_doubt(count)

    @property
    def dropped(self) -> int:
        return self.spool.dropped + self._lost

    async def open(self) -> None:
        await self._run(self.spool.open)

    def append(self, records: list[Record]) -> int:
        """Queue records for the next flush, in order (memory only: fine on the loop);
        how many the spool took."""
        spool = self.spool
        stored = sum(spool.append(pack(record)) for record in records)
        self._metrics.stream_spooled.inc(stored)
        if stored < len(records):
            self.count_drops()
        return stored

    async def flush(self) -> str | None:
        """Write and fsync what was appended; the error, if the disk failed."""
        try:
            await self._run(self.spool.flush)
        except OSError as exc:
            log.error("decision stream: spool write failed, events lost: %s", exc)
            return f"spool write failed: {exc}"
        finally:
            self.count_drops()
        return None

    async def read(self, max_bytes: int) -> Chunk:
        return await self._run(self.spool.read, max_bytes)

    async def ack(self, end: Position, count: int) -> None:
        await self._run(self.spool.ack, end, count)

    async def close(self) -> None:
        try:
            await self._run(self.spool.close)
        except OSError as exc:
            log.error("decision stream: could not write the spool at shutdown: %s", exc)
        self.count_drops()
        self._io.shutdown(wait=True)

    def drop(self, count: int, why: str) -> None:
        self._lost += count
        log.error("decision stream: %d events dropped: %s", count, why)
        self.count_drops()

    def count_drops(self) -> None:
        """Count new drops in the metrics and say so, loudly but at most every few seconds."""
        dropped = self.dropped
        if dropped <= self._dropped_seen:
            return
        self._metrics.stream_dropped.inc(dropped - self._dropped_seen)
        self._dropped_seen = dropped
        now = time.monotonic()
        if now - self._drop_logged >= DROP_LOG_INTERVAL:
            self._drop_logged = now
            log.error(
                "decision stream: spool %s is full (%d of %d bytes): %d events dropped so far",
                self.spool.directory,
                self.spool.size,
                self.spool.max_bytes,
                dropped,
            )

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, function, *args)
