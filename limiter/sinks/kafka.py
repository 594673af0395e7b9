"""The Kafka decision sink: every decision answered ends up on the topic, and never at the
cost of a check.

``emit`` only appends to a bounded deque.  A sender task lingers a few milliseconds, turns
what queued into a round (one batch per partition) and waits for the broker's
acknowledgement.  If it does not come within ``stall_timeout``, or the deque fills up,
the sink switches to spooling: the unacknowledged round, then everything queued and
emitted after it, goes to the disk spool, in order.  A recovery task (``Replayer``) waits
until that round in doubt settles, probes the broker, replays the spool in order - skipping
what the round in doubt did deliver - and the sink sends directly again once it is empty.

Waiting for the round in doubt rather than resending it keeps a broker that was only
stalled (not dead) from receiving it twice: the request sits in its socket buffer and is
written when it resumes.  Two cases remain where a record may arrive twice, with the same
``event_id``: the broker stays stalled for longer than the request timeout (30 s), or the
limiter shuts down while a round is in doubt (it stays in the spool and is replayed on the
next start).  Without an idempotent broker, the producer cannot tell; so the spool marks
what was sent in doubt, and a record replayed from there carries the ``ratewatch-resent``
header: the consumer drops it if its event is already stored.  Records never in doubt carry
no header, and cost the consumer nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from limiter.emit import Decision
from limiter.metrics import LimiterMetrics
from limiter.sinks.events import EventIds, Record, to_records
from limiter.sinks.producer import Producer, StreamUnavailable
from limiter.sinks.replay import Replayer
from limiter.sinks.rounds import Round
from limiter.sinks.spooler import Spooler
from stream.events import DECISIONS_TOPIC

log = logging.getLogger("ratewatch.stream")

ROUND_EVENTS = 2000  # a round's most events; a partition's batch may then fill (fine)
SPOOL_DEFAULT_BYTES = 1 << 30


class KafkaSink:
    def __init__(
        self,
        bootstrap: str,
        spool_dir: Path,
        metrics: LimiterMetrics,
        instance: str,
        topic: str = DECISIONS_TOPIC,
        *,
        spool_max_bytes: int = SPOOL_DEFAULT_BYTES,
        max_queue: int = 65536,
        linger_ms: float = 20,
        stall_timeout: float = 1.0,
        request_timeout_ms: int = 30_000,
        connect_timeout: float = 2.0,
        flush_interval: float = 0.1,
        close_timeout: float = 10.0,
        idempotence: bool | None = None,
    ):
        self.topic = topic
        self._metrics = metrics
        self._instance = instance
        self._ids = EventIds()
        self._max_queue = max_queue
        self._linger = linger_ms / 1000
        self._stall = stall_timeout
        self._flush_interval = flush_interval
        self._close_timeout = close_timeout
        self._producer = Producer(
            bootstrap, topic, f"ratewatch-{instance}", request_timeout_ms, connect_timeout,
            idempotence, self._on_delivered,
        )  # fmt: skip
        self._spooler = Spooler(spool_dir, spool_max_bytes, metrics)
        self._replayer = Replayer(self._spooler, self._producer, stall_timeout)
        self._queue: deque[Decision] = deque()
        self._wakeup = asyncio.Event()
        self._spooling = False
        self._current: Round | None = None  # the direct round being delivered
        self._sender: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._last_error: str | None = None
        self._last_flush = 0.0
        metrics.stream_queue_depth.set_function(lambda: len(self._queue))
        metrics.stream_up.set_function(lambda: 0 if self._spooling else 1)

    def emit(self, decisions: list[Decision]) -> None:
        """The hot path: a deque append, nothing that waits."""
        queue = self._queue
        if len(queue) + len(decisions) > self._max_queue or self._closed:
            self._overflow(len(decisions))
        queue.extend(decisions)
        if not self._wakeup.is_set():
            self._wakeup.set()

    def _overflow(self, room: int) -> None:
        """The deque is full, the broker slower than the traffic: spool the oldest decisions
        (order holds, as everything after them is spooled too until the spool is empty)."""
        if self._closed:  # nothing would send or spool them any more
            self._spooler.drop(len(self._queue) + room, "emitted after the sink was closed")
            self._queue.clear()
            return
        self._start_spooling("the in-memory queue is full: the broker is too slow")
        queue = self._queue
        self._spooler.append(
            self._encode(queue.popleft() for _ in range(min(len(queue), room + 255)))
        )

    async def start(self) -> None:
        """Open the spool (what an earlier run left is replayed first) and connect; an
        unreachable broker is not an error: the sink spools until it answers."""
        await self._spooler.open()
        if self._spooler.events:
            self._start_spooling(
                f"{self._spooler.events} events left in the spool by a previous run"
            )
        try:
            await self._producer.connect()
        except StreamUnavailable as exc:
            log.warning("decision stream: %s; spooling until it answers", exc)
            self._start_spooling(str(exc))
        else:
            log.info(
                "decision stream: producing to %s at %s (idempotent: %s)",
                self.topic,
                self._producer.bootstrap,
                self._producer.idempotence,
            )
        self._sender = asyncio.create_task(self._send_loop(), name="ratewatch-stream-send")

    async def close(self) -> None:
        """Send or spool what is queued, then drain the spool while ``close_timeout``
        lasts; what is left is on disk (fsync'd) and replayed on the next start."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        deadline = time.monotonic() + self._close_timeout
        for task in (self._sender, self._recovery):  # the sender may start a recovery
            if task is not None and not task.done():
                await asyncio.wait([task], timeout=max(0.0, deadline - time.monotonic()))
        self._closed = True
        for task in (self._sender, self._recovery):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._current is not None and not self._current.delivered():
            self._start_spooling("closing with a batch unacknowledged")
        if self._queue:
            self._start_spooling("closing with events queued")
            self._spooler.append(self._encode(self._drain_queue()))
        await self._spooler.close()
        if self._spooler.events:
            log.warning(
                "decision stream: %d events stay in the spool %s, replayed on the next start",
                self._spooler.events,
                self._spooler.spool.directory,
            )
        await self._producer.close(max(0.5, deadline - time.monotonic()))

    def status(self) -> dict[str, object]:
        """The decision stream as /health/detailed shows it."""
        return {
            "status": "spooling" if self._spooling else "up",
            "connected": self._producer.connected,
            "topic": self.topic,
            "queued": len(self._queue),
            "in_doubt": len(doubt.records) if (doubt := self._replayer.in_doubt) else 0,
            "spooled_events": self._spooler.events,
            "spooled_bytes": self._spooler.spool.size,
            "dropped": self._spooler.dropped,
            "idempotent": self._producer.idempotence,
            "last_error": self._last_error,
        }

    # -- sending directly --------------------------------------------------------------

    async def _send_loop(self) -> None:
        while not (self._closing and not self._queue and not self._spooler.pending):
            try:
                await self._send_step()
            except Exception:  # a bug must not stop the stream: the spool takes over
                log.exception("decision stream: the sender failed; spooling")
                self._start_spooling("the sender failed; see the log")
                await asyncio.sleep(self._flush_interval)

    async def _send_step(self) -> None:
        if self._spooling:
            self._spooler.append(self._encode(self._drain_queue()))
            if self._spooler.pending:  # fsync in batches: at most every flush_interval
                await asyncio.sleep(self._last_flush + self._flush_interval - time.monotonic())
                self._last_flush = time.monotonic()
                self._last_error = await self._spooler.flush() or self._last_error
                return
        elif self._queue:
            if not self._closing:
                await asyncio.sleep(self._linger)  # let a batch gather
            if not self._spooling:
                await self._send_round()
            return
        if not self._closing:
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _send_round(self) -> None:
        self._current = round_ = Round(self._take_round())
        if not await self._producer.deliver(round_, self._stall) and not self._spooling:
            self._start_spooling(self._producer.last_error or "no acknowledgement in time")
        self._current = None

    def _take_round(self) -> list[Record]:
        queue = self._queue
        return self._encode([queue.popleft() for _ in range(min(len(queue), ROUND_EVENTS))])

    def _on_delivered(self, count: int, replayed: bool) -> None:
        self._metrics.stream_sent.inc(count)
        if replayed:
            self._metrics.stream_replayed.inc(count)

    # -- spooling and replay -----------------------------------------------------------

    def _start_spooling(self, reason: str) -> None:
        self._last_error = reason
        if self._spooling:
            return
        self._spooling = True
        log.warning("decision stream: spooling to %s: %s", self._spooler.spool.directory, reason)
        # sending directly means the spool is empty: the round in flight becomes its head,
        # and what of it the broker did take is skipped on replay (unless some was dropped)
        round_ = self._current
        if round_ is not None:
            stored = self._spooler.append(round_.records)
            if round_.handed:  # it may land (or have landed) all the same
                self._spooler.mark_in_doubt(stored)
            if stored == len(round_.records):
                self._replayer.in_doubt = round_
        if not self._closed and (self._recovery is None or self._recovery.done()):
            self._recovery = asyncio.create_task(self._recover(), name="ratewatch-stream-recover")

    async def _recover(self) -> None:
        delay = 0.05
        while self._spooling:
            try:
                await self._replayer.settle()
                if self._producer.ready:
                    await self._producer.probe()
                else:
                    await self._producer.connect()
                while (state := await self._replayer.replay()) != "empty":
                    if state == "unflushed":
                        await asyncio.sleep(self._flush_interval)  # the sender flushes
                self._spooling = False  # no await since replay() found the spool empty
            except Exception as exc:  # unreachable broker, disk error, or a bug: retry
                if not isinstance(exc, StreamUnavailable | OSError):
                    log.exception("decision stream: replay failed")
                self._last_error = str(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        log.info("decision stream: spool replayed, sending directly again")
        self._last_error = None

    def _drain_queue(self) -> Iterable[Decision]:
        queue = self._queue
        while queue:
            yield queue.popleft()

    def _encode(self, decisions: Iterable[Decision]) -> list[Record]:
        return to_records(decisions, self._ids, self._instance)
