"""The embedded pipeline's transport: the Valkey event stream read by a consumer group
(``stream.consumer_group``) with acknowledgements, and recovery that writes nothing twice.

- A batch's cut (first and last offset) is recorded before it is written.  A failed write
  is retried with the same batch until it succeeds (or the worker stops, leaving the batch
  pending); only then is the batch acknowledged.
- A worker killed in the middle of a write (the raw rows stored, some rollups not) leaves
  its batch pending under its consumer name.  The next worker of that name reads its
  pending entries first and writes them with the recorded cuts: the same rows under the
  same deduplication token complete the rollups and add nothing to the raw table.
- A failure of Redis while reading or acknowledging is retried with backoff; then the
  consumer reads its own pending entries again, as an acknowledgement may be among what
  failed.
- Once the worker is told to stop, the batch in hand is finished and acknowledged (or,
  while the store fails, left pending for the next worker).
- A trimmer (``stream.consumer_group.trim_acknowledged``) removes entries every reader has
  acknowledged, so the stream does not grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from stream.consumer_group import FROM_START, ConsumerGroup, Entry
from stream.handlers import BatchHandler, EventStore, Record, entry_record

log = logging.getLogger("ratewatch.stream")

GROUP = "ratewatch-pipeline"
CONSUMER = "pipeline"
PARTITION = 0  # a stream is one ordered sequence
MAX_RETRY_PAUSE = 5.0


class PlannedStore(EventStore, Protocol):
    def plan_batches(self, plans: Sequence[tuple[str, int, int, int]]) -> None: ...

    def planned_batches(
        self, source: str, partition: int, start: int, limit: int
    ) -> dict[int, int]: ...


InStore = Callable[..., Awaitable[Any]]  # runs a store call on the store's own thread


class _Stopping(Exception):
    """The worker stops while a batch waits for the store: leave it pending."""


class StreamPipeline:
    """Reads ``stream`` as ``CONSUMER`` of ``GROUP`` into ``store`` through ``handler``
    until ``stopping`` is set; ``in_store`` runs the store's calls on its thread.
    ``batch_size`` caps a batch; a read waits up to ``block_ms`` for new entries."""

    def __init__(
        self,
        redis: Redis,
        stream: str,
        handler: BatchHandler,
        store: PlannedStore,
        in_store: InStore,
        stopping: asyncio.Event,
        *,
        batch_size: int = 5000,
        block_ms: int = 100,
    ):
        self._group = ConsumerGroup(
            redis, stream, GROUP, CONSUMER, start=FROM_START, count=batch_size
        )
        self._block_ms = block_ms
        self._stream = stream
        self._handler = handler
        self._store = store
        self._in_store = in_store
        self._stopping = stopping
        self._metrics = handler.metrics  # the failures beside the handler's counts

    async def run(self) -> None:
        """Consume until ``stopping`` is set: first what this consumer read and never
        acknowledged (``recover``), then each new batch, acknowledged once it is stored."""
        pause, recovering = 0.25, True
        while not self._stopping.is_set():
            try:
                if recovering:
                    recovered = await self.recover()
                    if recovered:
                        log.info("recovered %d entries read but never acknowledged", recovered)
                    recovering = False
                entries = await self._group.read_new(self._block_ms)
                await self.write(_records(entries))
                await self._group.ack([entry_id for entry_id, _ in entries])
            except _Stopping:
                log.warning("stopping with a batch of %s unstored: it is read again", self._stream)
                return
            except (RedisError, OSError) as exc:
                recovering = True  # an XACK may be among what failed
                log.error("reading %s failed (%s); retrying in %.1fs", self._stream, exc, pause)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
                pause = min(MAX_RETRY_PAUSE, pause * 2)
            else:
                pause = 0.25

    async def write(self, records: Sequence[Record], planned: bool = False) -> None:
        """Record the cut (unless it is recorded already), then write until it succeeds."""
        if not records:
            return
        if not planned:
            plan = (self._stream, PARTITION, records[0].offset, records[-1].offset)
            await self._retry(self._store.plan_batches, [plan])
        await self._retry(self._handler.handle, self._stream, PARTITION, records)

    async def _retry(self, call: Callable[..., Any], *args: Any) -> None:
        pause = 0.25
        while True:
            try:
                await self._in_store(call, *args)
                return
            except Exception as exc:  # the store's failure: retried, never skipped
                self._metrics.write_failures.inc()
                if self._stopping.is_set():
                    raise _Stopping from exc
                log.error(
                    "writing a batch of %s failed, retrying in %.1fs: %s", self._stream, pause, exc
                )
                await asyncio.sleep(pause)
                pause = min(MAX_RETRY_PAUSE, pause * 2)

    async def recover(self, count: int = 10_000) -> int:
        """Write and acknowledge the entries this consumer read but never acknowledged
        (a previous worker's), with the cuts recorded for them; the number recovered."""
        recovered, start = 0, "0"
        while True:
            pending = await self._group.read_pending(start, count)
            if not pending:
                return recovered
            records = _records(pending)
            if records:
                plans = await self._in_store(
                    self._store.planned_batches,
                    self._stream,
                    PARTITION,
                    records[0].offset,
                    1000,
                )
                for batch, planned in cut(records, plans):
                    await self.write(batch, planned)
            await self._group.ack([entry_id for entry_id, _ in pending])
            recovered += len(records)
            start = pending[-1][0].decode()


def _records(entries: Sequence[Entry]) -> list[Record]:
    # an entry deleted since it was read comes back without fields: nothing to write
    return [entry_record(entry_id, fields) for entry_id, fields in entries if fields]


def cut(records: Sequence[Record], plans: Mapping[int, int]) -> list[tuple[Sequence[Record], bool]]:
    """``records`` as batches: the recorded cuts as recorded, the rest between them."""
    batches: list[tuple[Sequence[Record], bool]] = []
    i = 0
    while i < len(records):
        last = plans.get(records[i].offset)
        end = i + 1
        if last is not None:
            while end < len(records) and records[end].offset <= last:
                end += 1
            batches.append((records[i:end], True))
        else:
            while end < len(records) and records[end].offset not in plans:
                end += 1
            batches.append((records[i:end], False))
        i = end
    return batches


async def ensure_group(redis: Redis, stream: str) -> None:
    """Create the consumer group at the stream's start (and the stream, if need be), before
    anything trims the stream: a group created later, or at the stream's end, would miss
    every decision appended before the worker first ran."""
    await ConsumerGroup(redis, stream, GROUP, CONSUMER, start=FROM_START).ensure()
