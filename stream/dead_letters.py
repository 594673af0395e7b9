"""Dead letters on Kafka: records a consumer cannot store, kept with the reason.

Each one is produced, bytes unchanged, to ``ratewatch.decisions.dlq`` with the headers
``error``, ``source``, ``partition`` and ``offset``, so an operator can read the reason,
fix the producer and replay.  The batch handler calls ``send`` from the thread that owns
the store, in the middle of a batch, so ``send`` only hands the record to the event loop;
the consumer awaits ``flush`` before it commits the batch, which makes the dead-letter topic
at least once as well.  A dead letter that cannot be produced is logged and counted and
does not hold up the consumer: a malformed record is never worth a stalled pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter

from stream.events import DECISIONS_DLQ_TOPIC
from stream.handlers import Record

log = logging.getLogger("ratewatch.stream")

# value, topic, headers → awaitable that resolves once the broker acknowledged
Publish = Callable[[bytes, str, dict[str, str]], Awaitable[object]]

MAX_ERROR_HEADER = 1000


class DeadLetterMetrics:
    """The dead letters of either transport: the Kafka topic here, the Valkey stream of
    the embedded pipeline (``stream.redis_dead_letters``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.sent = Counter(
            "ratewatch_stream_dead_letters",
            "Records the consumer could not store, kept on the dead-letter topic or stream",
            registry=self.registry,
        )
        self.failed = Counter(
            "ratewatch_stream_dead_letters_failed",
            "Dead letters that could not be kept (logged, then dropped)",
            registry=self.registry,
        )


class KafkaDeadLetters:
    """``stream.handlers.DeadLetters`` through ``publish`` (FastStream's broker.publish)."""

    def __init__(
        self,
        publish: Publish,
        loop: asyncio.AbstractEventLoop,
        metrics: DeadLetterMetrics,
        topic: str = DECISIONS_DLQ_TOPIC,
        timeout: float = 10.0,
    ) -> None:
        self._publish = publish
        self._loop = loop
        self.metrics = metrics
        self.topic = topic
        self._timeout = timeout
        self._pending: set[asyncio.Task[bool]] = set()
        self.sent = 0
        self.failed = 0
        # a batch retried after a store failure reports its malformed records again
        self._since_flush: set[tuple[str, int, int]] = set()

    def send(self, source: str, partition: int, record: Record, error: str) -> None:
        """Queue the record for the dead-letter topic; safe from any thread, never blocks."""
        self._loop.call_soon_threadsafe(self._start, source, partition, record, error)

    async def flush(self) -> int:
        """Wait for every dead letter queued so far; the number that could not be produced."""
        await asyncio.sleep(0)  # run _start callbacks queued from other threads
        failed = 0
        while self._pending:
            tasks, self._pending = self._pending, set()
            failed += (await asyncio.gather(*tasks)).count(False)
        self._since_flush.clear()
        return failed

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush()

    def _start(self, source: str, partition: int, record: Record, error: str) -> None:
        key = (source, partition, record.offset)
        if key in self._since_flush:
            return
        self._since_flush.add(key)
        headers = {
            "error": " ".join(error.split())[:MAX_ERROR_HEADER],
            "source": source,
            "partition": str(partition),
            "offset": str(record.offset),
        }
        task = self._loop.create_task(self._produce(record.value, headers))
        self._pending.add(task)

    async def _produce(self, value: bytes, headers: dict[str, str]) -> bool:
        try:
            await asyncio.wait_for(self._publish(value, self.topic, headers), self._timeout)
        except Exception as exc:
            self.failed += 1
            self.metrics.failed.inc()
            log.error(
                "dead letter %s/%s@%s could not be produced to %s (dropped): %r",
                headers["source"],
                headers["partition"],
                headers["offset"],
                self.topic,
                exc,
            )
            return False
        self.sent += 1
        self.metrics.sent.inc()
        return True
