"""The embedded pipeline's transport: the Valkey event stream read by a consumer group
(``stream.consumer_group``) with acknowledgements, and recovery that writes nothing twice.

- Entries are read and held (``stream.batching``) until the batch is due: it holds the size
  bound's decisions, or its first entry was read long enough ago for its size; then the
  batch is written in three statements (its cut, the insert, the ledger) and acknowledged.
  One batch is written at a time, and the next one is read meanwhile (up to the size
  bound).  A worker
  that has caught up with the stream reads a batch's first entry as it arrives and the
  rest in one read a second once the batch may be due, so a trickle of entries costs a
  read a second while a batch is held, not one per entry.
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
- Once the worker is told to stop, the entries in hand are written and acknowledged (or,
  while the store fails, left pending for the next worker).
- A trimmer (``stream.consumer_group.trim_acknowledged``) removes entries every reader has
  acknowledged, so the stream does not grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from stream import cancellation
from stream.batching import BatchBounds, Pending
from stream.consumer_group import FROM_START, ConsumerGroup, Entry
from stream.deferral import Deferral
from stream.events import entry_decisions, entry_offset
from stream.handlers import BatchHandler, EventStore, Record, entry_record

log = logging.getLogger("ratewatch.stream")

GROUP = "ratewatch-pipeline"
CONSUMER = "pipeline"
PARTITION = 0  # a stream is one ordered sequence
MAX_RETRY_PAUSE = 5.0
MAX_READ = 5000  # entries of one read: the reply is parsed at once
WRITING_POLL_MS = 50  # a read's longest wait while a batch is written
# a read's longest wait with nothing in hand: an entry ends the wait as it arrives, so this
# only says how often an idle worker wakes (and how late it may notice it is told to stop:
# no later than the outbox drains and detection, which wait as long)
BLOCK_MS = 1000


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
    ``bounds`` say when what was read is written; a read waits up to ``block_ms`` for new
    entries (less when a batch is due sooner).  With a ``deferral``, reads and inserts
    wait while it holds them (the checks first, ``stream.deferral``)."""

    def __init__(
        self,
        redis: Redis,
        stream: str,
        handler: BatchHandler,
        store: PlannedStore,
        in_store: InStore,
        stopping: asyncio.Event,
        *,
        bounds: BatchBounds | None = None,
        block_ms: int = BLOCK_MS,
        deferral: Deferral | None = None,
    ):
        self.bounds = bounds or BatchBounds()
        self._read_count = min(self.bounds.max_decisions, MAX_READ)
        self._group = ConsumerGroup(
            redis, stream, GROUP, CONSUMER, start=FROM_START, count=self._read_count
        )
        self._block_ms = block_ms
        self._stream = stream
        self._handler = handler
        self._store = store
        self._in_store = in_store
        self._stopping = stopping
        self._metrics = handler.metrics  # the failures beside the handler's counts
        # each entry read and not yet acknowledged, as a record (None: deleted since)
        self._pending: Pending[tuple[bytes, Record | None]] = Pending(self.bounds)
        self._writing: asyncio.Task[None] | None = None  # the batch being stored
        self._caught_up = False  # whether the last read found less than a full read
        self._deferral = deferral

    async def run(self) -> None:
        """Consume until ``stopping`` is set: first what this consumer read and never
        acknowledged (``recover``), then new entries, each batch acknowledged once it is
        stored; on the way out, what is in hand."""
        pause, recovering = 0.25, True
        try:
            while not self._stopping.is_set():
                try:
                    if recovering:
                        await self._settle()
                        # what is in hand is still pending in Redis: recover() writes it
                        self._pending.take_all()
                        self._handler.forget(self._stream, PARTITION)
                        recovered = await self.recover()
                        if recovered:
                            log.info("recovered %d entries read but never acknowledged", recovered)
                        recovering = False
                    await self._step()
                except _Stopping:
                    log.warning(
                        "stopping with a batch of %s unstored: it is read again", self._stream
                    )
                    return
                except (RedisError, OSError) as exc:
                    recovering = True  # an XACK may be among what failed
                    log.error("reading %s failed (%s); retrying in %.1fs", self._stream, exc, pause)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), pause)
                    pause = min(MAX_RETRY_PAUSE, pause * 2)
                else:
                    pause = 0.25
            await self._finish(recovering)
        finally:
            if self._writing is not None:
                self._writing.cancel()  # only when leaving on an unexpected error

    async def _step(self) -> None:
        """Start writing the batch due (one at a time: while one is written, the next one
        is read), then read what is new; first, while the checks are busy, nothing."""
        if self._deferral is not None:
            settled = self._caught_up and not self._pending.due(time.monotonic())
            await self._deferral.turn(self._stopping, settled)
            if self._stopping.is_set():
                return
        writing = self._writing
        if writing is not None and writing.done():
            self._writing = None
            writing.result()  # its failure, if it failed: stopping, or Redis (then recover)
        if self._writing is None and self._pending.due(time.monotonic()):
            batch = self._pending.take()
            self._writing = asyncio.create_task(self._store_batch(batch), name="ratewatch-batch")
        if self._writing is not None and self._pending.decisions >= self.bounds.max_decisions:
            await asyncio.wait([self._writing])  # the next batch is full: the store first
            return
        now = time.monotonic()
        look = self._pending.next_look(now)
        if self._caught_up and look is not None and not self._pending.due(now):
            # caught up, with a batch in hand that is not due yet: what arrives until it is
            # due (or may be, by its size) joins it in one read, rather than one read (and
            # wake-up) per entry
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), look - now)
            if self._stopping.is_set():
                return
            entries = await self._group.read_new(None, self._read_count)
        else:
            entries = await self._group.read_new(self._wait_ms(), self._read_count)
        # a full read: more may be waiting (a backlog), so the next read comes at once
        self._caught_up = len(entries) < self._read_count
        if entries:
            held = [(entry_id, _record(entry_id, fields)) for entry_id, fields in entries]
            sizes = [entry_decisions(r.value) if r else 1 for _, r in held]
            self._pending.add(held, time.monotonic(), sizes)

    def _wait_ms(self) -> int:
        """How long a read may wait: until the batch in hand is due, or a little while a
        batch is written (its end may let the next one start), at most ``block_ms``."""
        wait = self._block_ms
        if self._writing is not None:
            wait = min(wait, WRITING_POLL_MS)
        else:
            now = time.monotonic()
            look = self._pending.next_look(now)
            if look is not None:
                wait = min(wait, int((look - now) * 1000) + 1)
        return max(1, wait)

    async def _store_batch(self, batch: Sequence[tuple[bytes, Record | None]]) -> None:
        await self.write([record for _, record in batch if record is not None])
        await self._group.ack([entry_id for entry_id, _ in batch])

    async def _settle(self) -> None:
        """Wait for the batch being written; a failed acknowledgement leaves it pending,
        for ``recover``."""
        writing, self._writing = self._writing, None
        if writing is not None:
            with contextlib.suppress(RedisError, OSError):
                await writing

    async def _finish(self, recovering: bool) -> None:
        """Told to stop: the batch being written, then what is in hand (unless it is to be
        recovered), written and acknowledged; left pending if the store or Redis fails."""
        try:
            await self._settle()
            while self._pending and not recovering:
                await self._store_batch(self._pending.take())
        except _Stopping:
            log.warning("stopping with a batch of %s unstored: it is read again", self._stream)
        except (RedisError, OSError) as exc:
            log.warning("stopping with %s unacknowledged (%s): it is read again", self._stream, exc)

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
                await cancellation.pause(pause)
                pause = min(MAX_RETRY_PAUSE, pause * 2)

    async def recover(self, count: int = 10_000) -> int:
        """Write and acknowledge the entries this consumer read but never acknowledged
        (a previous worker's), with the cuts recorded for them; the number recovered.
        A recorded cut is written whole: one that goes on past a page waits for the next."""
        recovered, after = 0, "0"
        carried: list[Entry] = []  # the start of a recorded cut that goes on past the page
        while True:
            page = await self._group.read_pending(after, count)
            entries, carried = carried + page, []
            if not entries:
                return recovered
            records = _records(entries)
            batches: list[tuple[Sequence[Record], bool]] = []
            if records:
                plans = await self._in_store(
                    self._store.planned_batches,
                    self._stream,
                    PARTITION,
                    records[0].offset,
                    1000,
                )
                batches = cut(records, plans)
                tail, planned = batches[-1]
                if page and planned and plans[tail[0].offset] > tail[-1].offset:
                    batches.pop()
                    carried = [e for e in entries if entry_offset(e[0]) >= tail[0].offset]
            for batch, planned in batches:
                if planned:
                    await self.write(batch, planned)
                else:
                    for part in _by_size(batch, self.bounds.max_decisions):
                        await self.write(part)
            done = entries[: len(entries) - len(carried)]
            await self._group.ack([entry_id for entry_id, _ in done])
            recovered += sum(1 for _, fields in done if fields)
            if not page:
                return recovered
            after = page[-1][0].decode()


def _record(entry_id: bytes, fields: Mapping[bytes, bytes] | None) -> Record | None:
    # an entry deleted since it was read comes back without fields: nothing to write
    return entry_record(entry_id, fields) if fields else None


def _by_size(records: Sequence[Record], most: int) -> Iterator[Sequence[Record]]:
    """``records`` in runs of at most ``most`` decisions (a larger entry alone)."""
    start, held = 0, 0
    for i, record in enumerate(records):
        size = entry_decisions(record.value)
        if i > start and held + size > most:
            yield records[start:i]
            start, held = i, 0
        held += size
    if start < len(records):
        yield records[start:]


def _records(entries: Sequence[Entry]) -> list[Record]:
    return [record for entry_id, fields in entries if (record := _record(entry_id, fields))]


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
