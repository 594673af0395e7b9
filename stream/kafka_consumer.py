"""The analytics consumer on Kafka: decision events from a topic into the event store, in
batches, each written once however often it is delivered.

FastStream's batch subscriber fetches up to ``max_records`` records; the broker holds a fetch
until ``fetch_min_bytes`` arrived or ``max_wait_ms`` passed.  Fetched records are held
(``stream.batching``) until they make a batch: ``batch.max_decisions`` records (a backlog is
drained some 60% faster in inserts of 10,000 or more than of fewer), ``batch.min_decisions``
a ``batch.min_age`` after the first of them was fetched, or ``batch.max_age`` after it,
whichever comes first, so that a busy stream is about one insert a second and a trickle one
every ``batch.max_age``.  One batch is written at a time, and the next one is
fetched meanwhile (up to a whole batch; then the fetches wait for the store).  A batch is
split by partition and each partition's share is one insert; the cuts of all of them are
recorded in one statement before, and their ledger rows in one statement after.  A fetch
delivered after its partition was reset (revoked, assigned anew, sought back) is dropped:
it is fetched again from there.  Offsets are committed by hand (``AckPolicy.MANUAL``),
after the store accepted the records and their dead letters were acknowledged: at least
once.  Nothing held is committed: a consumer that dies holding records reads them again.

Exactly once in effect comes from the store (``analytics.event_store``, migration 0003):
- every batch is written per partition, in one insert whose deduplication token names its
  first and last offset; the cut is recorded in the store before the insert, and after a
  crash the first batches are cut the same way, because only the same insert again completes
  one that was cut short (the raw table committed, some rollups not);
- the store's ledger of stored offsets makes the batch handler skip records written before
  under another cut (a rebalance, a commit lost with the process).
A failed store call is retried in place with the same cut, never by seeking back: FastStream's
nack rewinds, but the next fetch may cut the records differently.

All store calls run on the one thread the caller gives (chDB belongs to one thread); the
event loop only fetches, commits and produces dead letters.  A rebalance waits for the batch
being written and writes what is held (the revocation listener takes the same lock), so it
is committed before another member gets its partition.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

from aiokafka import (  # type: ignore[import-untyped]
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import IllegalStateError, KafkaError  # type: ignore[import-untyped]
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage
from faststream.kafka.subscriber.usecase import BatchSubscriber

from stream.batching import BatchBounds, Pending
from stream.consumer_metrics import ConsumerMetrics
from stream.dead_letters import DeadLetterMetrics, KafkaDeadLetters
from stream.events import DECISIONS_DLQ_TOPIC, DECISIONS_TOPIC, RESENT_HEADER
from stream.handlers import BatchHandler, EventStore, Record, Staged

log = logging.getLogger("ratewatch.stream")

T = TypeVar("T")
Records = list[ConsumerRecord[bytes, bytes]]

DEFAULT_GROUP = "ratewatch-analytics"
# recorded cuts loaded at once; past the last one the consumer asks again
PLAN_LOOKUP_LIMIT = 10_000


@dataclass(frozen=True)
class ConsumerSettings:
    """How the consumer reads: where, as which group, and how large and late its batches
    (``max_records`` bounds one fetch, ``batch`` the inserts)."""

    bootstrap: str
    topic: str = DECISIONS_TOPIC
    group: str = DEFAULT_GROUP
    dead_letter_topic: str = DECISIONS_DLQ_TOPIC
    max_records: int = 50_000
    max_wait_ms: int = 250
    fetch_min_bytes: int = 1 << 20
    max_partition_fetch_bytes: int = 16 << 20
    # a member silent this long is dropped; a group also waits about half of it to form
    session_timeout_ms: int = 10_000
    retry_initial: float = 0.2
    retry_max: float = 5.0
    graceful_timeout: float = 60.0
    log_interval: float = 10.0
    batch: BatchBounds = field(default_factory=BatchBounds)

    def __post_init__(self) -> None:
        for name in ("bootstrap", "topic", "group", "dead_letter_topic"):
            if not getattr(self, name).strip():
                raise ValueError(f"the consumer's {name} must not be empty")
        if self.max_records < 1:
            raise ValueError(f"max_records must be at least 1, not {self.max_records}")
        if not 0 <= self.max_wait_ms <= 60_000:
            raise ValueError(f"max_wait_ms must be 0..60000, not {self.max_wait_ms}")
        if self.session_timeout_ms < 3000:
            raise ValueError(
                f"session_timeout_ms must be 3000 or more, not {self.session_timeout_ms}"
            )


class Cut(NamedTuple):
    """Records ``first..last`` of one partition, written as one batch."""

    source: str
    partition: int
    first: int
    last: int


class ConsumerStore(EventStore, Protocol):
    """The batch handler's store, which also records the cuts of the batches it writes."""

    def plan_batches(self, plans: Sequence[tuple[str, int, int, int]]) -> None: ...

    def planned_batches(
        self, source: str, partition: int, start: int, limit: int
    ) -> dict[int, int]:
        """Recorded cuts, first offset → last offset, from ``start`` on (``limit`` at most)."""
        ...


@dataclass
class _Partition:
    """One assigned partition: the recorded cuts still ahead, and records held back until a
    recorded cut is complete."""

    plans: dict[int, int]
    complete: bool  # False: the lookup was cut off after the last plan in ``plans``
    held: Records = field(default_factory=list)

    def split(
        self, records: Records, highwater: int | None
    ) -> tuple[list[tuple[Records, bool]], Records]:
        """``records`` as batches (each with whether its cut is recorded already), and the
        records to hold until more arrive."""
        offsets = [r.offset for r in records]
        firsts = sorted(self.plans)
        batches: list[tuple[Records, bool]] = []
        i = 0
        while i < len(records):
            start = offsets[i]
            last = self.plans.get(start)
            if last is not None and offsets[-1] < last:
                if highwater is None or highwater > last:
                    return batches, records[i:]  # the rest of the recorded cut is coming
                log.warning(
                    "partition %s ends before the recorded batch %d-%d: cutting anew",
                    records[i].partition,
                    start,
                    last,
                )
                del self.plans[start]
                last = None
            if last is not None:
                end = bisect.bisect_right(offsets, last)
                del self.plans[start]
                batches.append((records[i:end], True))
            else:
                # a new cut, which stops where the next recorded one begins
                following = bisect.bisect_right(firsts, start)
                end = len(records)
                if following < len(firsts):
                    end = bisect.bisect_left(offsets, firsts[following])
                batches.append((records[i:end], False))
            i = end
        return batches, []

    def exhausted(self, offset: int) -> bool:
        """Whether the loaded plans say nothing about ``offset`` and later ones may exist."""
        return not self.complete and (not self.plans or offset > max(self.plans))


class _Stopping(Exception):
    """The consumer stops while a batch waits for the store: leave it uncommitted."""


class DecisionConsumer:
    """The FastStream Kafka app writing ``settings.topic`` to ``store``; every store call
    runs on ``executor`` (one thread).  Construct it in the running event loop.
    ``metrics`` counts the dead letters, ``consumer_metrics`` the rest."""

    def __init__(
        self,
        settings: ConsumerSettings,
        store: ConsumerStore,
        executor: Executor,
        metrics: DeadLetterMetrics | None = None,
        *,
        consumer_metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self._store = store
        self._executor = executor
        self.broker = KafkaBroker(
            settings.bootstrap,
            apply_types=False,
            graceful_timeout=settings.graceful_timeout,
            logger=logging.getLogger("ratewatch.stream.faststream"),
            log_level=logging.DEBUG,  # not a line per batch
        )
        self.dead_letters = KafkaDeadLetters(
            self._publish,
            asyncio.get_running_loop(),
            metrics or DeadLetterMetrics(),
            settings.dead_letter_topic,
        )
        self.metrics = consumer_metrics or ConsumerMetrics()
        self.handler = BatchHandler(store, self.dead_letters, metrics=self.metrics)
        self._partitions: dict[int, _Partition] = {}
        # fetched, not yet written: held until they make a batch
        self._pending: Pending[ConsumerRecord[bytes, bytes]] = Pending(settings.batch)
        self._lock = asyncio.Lock()  # over the held records
        # over a batch's write and commit, and the partitions' state (taken before _lock)
        self._writing = asyncio.Lock()
        self._kick = asyncio.Event()  # records held, or stopping: the writer looks again
        self._taken = asyncio.Event()  # a batch was taken: a fetch held back may go on
        self._stopping = False
        self._reporter: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.commits = 0
        self.commit_failures = 0
        self.store_failures = 0
        self.subscriber: BatchSubscriber = self.broker.subscriber(
            settings.topic,
            batch=True,
            group_id=settings.group,
            max_records=settings.max_records,
            batch_timeout_ms=settings.max_wait_ms,
            fetch_min_bytes=settings.fetch_min_bytes,
            fetch_max_wait_ms=settings.max_wait_ms,
            max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.session_timeout_ms // 3,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
            listener=_Rebalance(self),
            parser=_parse,
            decoder=_records,
        )
        self.subscriber(self._on_batch)

    async def start(self) -> None:
        """Connect, join the group (returns once partitions are assigned) and consume."""
        await self.broker.start()
        self._reporter = asyncio.create_task(self._report(), name="ratewatch-stream-report")
        self._writer = asyncio.create_task(self._write_loop(), name="ratewatch-stream-batches")
        log.info(
            "consuming %s at %s as group %s",
            self.settings.topic,
            self.settings.bootstrap,
            self.settings.group,
        )

    async def stop(self) -> None:
        """Finish (or, if the store is failing, abandon) the batch being written, write what
        is held, commit, leave the group."""
        if self._stopping:
            return
        self._stopping = True  # from now on a fetched batch is written at once
        self._kick.set()
        self._taken.set()
        consumer = self.subscriber.consumer
        if consumer is not None:
            async with self._writing:
                await self._write_due(consumer, everything=True)
        await self.broker.stop()  # waits up to graceful_timeout for the batch in hand
        for task in (self._reporter, self._writer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.dead_letters.close()
        log.info("stopped: %s", self.progress())

    def progress(self) -> str:
        stats = self.handler.stats
        return (
            f"{stats.written} written, {stats.skipped} skipped as stored before, "
            f"{stats.malformed} malformed, {self.dead_letters.sent} dead letters "
            f"in {stats.batches} batches; {self.commits} commits "
            f"({self.commit_failures} failed), {self.store_failures} store errors"
        )

    # one fetched batch ------------------------------------------------------------------

    async def _on_batch(self, records: tuple[ConsumerRecord[bytes, bytes], ...]) -> None:
        if not records:
            return
        consumer = self.subscriber.consumer
        if consumer is None:
            return
        async with self._lock:
            current = await self._current(consumer, records)
            self._pending.add(current, time.monotonic())
        self._kick.set()
        if self._stopping:
            # stop() waits for this fetch: written now, while the consumer can commit it
            async with self._writing:
                await self._write_due(consumer, everything=True)
            return
        # the next batch is read while one is written, up to a whole batch: then the
        # fetches wait for the store
        while self._pending.decisions >= self.settings.batch.max_decisions and not self._stopping:
            self._taken.clear()
            await self._taken.wait()

    async def _current(
        self, consumer: Any, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> Records:
        """``records`` without those of partitions reset since they were fetched (revoked,
        or assigned anew, or sought back after a failure): they are fetched again from
        there.  A fetched record lies before its partition's position, a stale one not."""
        positions: dict[int, int | None] = {}
        current: Records = []
        for record in records:
            if record.partition not in positions:
                positions[record.partition] = await self._position(consumer, record.partition)
            position = positions[record.partition]
            if position is not None and record.offset < position:
                current.append(record)
        return current

    async def _position(self, consumer: Any, partition: int) -> int | None:
        """The partition's next offset to fetch; None if it is not this member's."""
        tp = TopicPartition(self.settings.topic, partition)
        if tp not in consumer.assignment():
            return None
        try:
            return int(await consumer.position(tp))
        except IllegalStateError:  # revoked meanwhile
            return None

    async def _write_loop(self) -> None:
        """Write each batch once it is due: full, or old enough for its size
        (``stream.batching``), also when nothing more is fetched; once stopping, stop()
        writes what is left."""
        while not self._stopping:
            now = time.monotonic()
            if not self._pending.due(now):
                look = self._pending.next_look(now)
                wait = None if look is None else max(0.0, look - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), wait)
                self._kick.clear()
                continue
            consumer = self.subscriber.consumer
            if consumer is None:  # not consuming (any more): nothing can be committed
                await asyncio.sleep(self.settings.retry_initial)
                continue
            async with self._writing:
                if not self._stopping:
                    await self._write_due(consumer)

    async def _write_due(self, consumer: Any, everything: bool = False) -> None:
        """Write and commit the batches due now (or all that is held), each of at most
        ``batch.max_decisions`` records.  Call holding ``_writing``."""
        while True:
            async with self._lock:
                if not self._pending or not (everything or self._pending.due(time.monotonic())):
                    return
                batch = self._pending.take()
            self._taken.set()
            if not await self._write_batch(consumer, batch):
                return

    async def _write_batch(self, consumer: Any, records: Records) -> bool:
        """Write one batch and commit it; False if it was not written (and is fetched
        again, or read again on the next start)."""
        by_partition: dict[int, Records] = defaultdict(list)
        for record in records:
            by_partition[record.partition].append(record)
        rewind = {p: self._first_unwritten(p, batch) for p, batch in by_partition.items()}
        try:
            done = await self._write(consumer, by_partition)
        except _Stopping:
            log.warning("stopping with a batch unwritten: it is consumed again on start")
            return False
        except Exception:
            # never go on past records that were not written: fetch them again, and what is
            # held after them (their recorded cuts are followed, the ledger skips what was
            # written)
            log.exception("a batch failed unexpectedly; fetching it again")
            async with self._lock:
                for record in self._pending.take_all():
                    first = self._first_unwritten(record.partition, [record])
                    rewind.setdefault(record.partition, first)
                for partition, offset in rewind.items():
                    self._partitions.pop(partition, None)
                    self.handler.forget(self.settings.topic, partition)
                    consumer.seek(TopicPartition(self.settings.topic, partition), offset)
            self._taken.set()
            await asyncio.sleep(self.settings.retry_max)
            return False
        failed = await self.dead_letters.flush()
        if failed:
            log.error("%d dead letters were lost; committing the batch anyway", failed)
        await self._commit(consumer, done)
        return True

    def _first_unwritten(self, partition: int, batch: Records) -> int:
        state = self._partitions.get(partition)
        return state.held[0].offset if state and state.held else int(batch[0].offset)

    async def _write(self, consumer: Any, by_partition: dict[int, Records]) -> dict[int, int]:
        """Write what can be written now; the next offset to commit per partition."""
        topic = self.settings.topic
        work: list[tuple[int, Records, bool]] = []
        for partition, records in sorted(by_partition.items()):
            state = self._partitions.get(partition)
            records = (state.held if state else []) + records
            if state is None or state.exhausted(records[0].offset):
                state = await self._load(partition, records[0].offset, state)
            highwater = consumer.highwater(TopicPartition(topic, partition))
            batches, state.held = state.split(records, highwater)
            work += [(partition, batch, recorded) for batch, recorded in batches]
        cuts = [
            Cut(topic, p, batch[0].offset, batch[-1].offset)
            for p, batch, recorded in work
            if not recorded
        ]
        if cuts:
            await self._in_store(self._store.plan_batches, cuts)
        done: dict[int, int] = {}
        staged: list[Staged] = []
        for partition, batch, _ in work:
            payload = [
                Record(r.offset, r.value if r.value is not None else b"", _resent(r.headers))
                for r in batch
            ]
            staged.append(await self._in_store(self.handler.stage, topic, partition, payload))
            done[partition] = batch[-1].offset + 1
        # every insert returned: the ledger rows of all of them, in one statement
        await self._in_store(self.handler.complete, staged)
        return done

    async def _load(self, partition: int, start: int, state: _Partition | None) -> _Partition:
        plans = await self._in_store(
            self._store.planned_batches, self.settings.topic, partition, start, PLAN_LOOKUP_LIMIT
        )
        if plans:
            log.info(
                "partition %d: following %d recorded batch cuts from offset %d on",
                partition,
                len(plans),
                start,
            )
        held = state.held if state else []
        fresh = _Partition(plans, complete=len(plans) < PLAN_LOOKUP_LIMIT, held=held)
        self._partitions[partition] = fresh
        return fresh

    async def _in_store(self, call: Callable[..., T], *args: Any) -> T:
        """``call`` on the store's thread, retried with backoff until it succeeds (or the
        consumer stops): the batch must be written as cut before anything goes on."""
        loop = asyncio.get_running_loop()
        delay = self.settings.retry_initial
        while True:
            try:
                return await loop.run_in_executor(self._executor, call, *args)
            except Exception as exc:
                self.store_failures += 1
                self.metrics.write_failures.inc()
                if self._stopping:
                    raise _Stopping from exc
                log.error("the store failed (%s); retrying the same batch in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max)

    async def _commit(self, consumer: Any, done: dict[int, int]) -> None:
        if not done:
            return
        offsets = {TopicPartition(self.settings.topic, p): offset for p, offset in done.items()}
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # the partitions moved to another member, which starts from the last commit;
            # the store's ledger skips what this batch wrote
            self.commit_failures += 1
            self.metrics.commit_failures.inc()
            log.warning("committing %s failed: %r", done, exc)
        else:
            self.commits += 1
            for tp, offset in offsets.items():
                self.metrics.partition_committed(tp.partition, offset, consumer.highwater(tp))

    # the group ----------------------------------------------------------------------------

    async def forget(self, partitions: set[TopicPartition]) -> None:
        """Drop the state of partitions assigned anew or revoked (after the batch in hand),
        and what is held of them: it is fetched again from the last commit."""
        async with self._writing, self._lock:
            self._forget(partitions)

    def _forget(self, partitions: set[TopicPartition]) -> None:
        mine = {tp.partition for tp in partitions if tp.topic == self.settings.topic}
        for partition in mine:
            self._partitions.pop(partition, None)
            self.handler.forget(self.settings.topic, partition)
        self._pending.discard(lambda record: record.partition in mine)
        self._taken.set()

    async def revoke(self, partitions: set[TopicPartition]) -> None:
        """Write and commit what is held while the partitions are still this member's,
        then forget those another member now consumes, their offsets and lag too."""
        consumer = self.subscriber.consumer
        async with self._writing:
            if consumer is not None and not self._stopping:
                await self._write_due(consumer, everything=True)
            async with self._lock:
                self._forget(partitions)
        self.metrics.partitions_revoked(
            tp.partition for tp in partitions if tp.topic == self.settings.topic
        )

    async def _publish(self, value: bytes, topic: str, headers: dict[str, str]) -> object:
        return await self.broker.publish(value, topic=topic, headers=headers)

    async def _report(self) -> None:
        last = -1
        while True:
            await asyncio.sleep(self.settings.log_interval)
            stats = self.handler.stats
            total = stats.written + stats.skipped + stats.malformed
            if total != last:
                log.info("progress: %s", self.progress())
                last = total


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: DecisionConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._consumer.revoke(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._consumer.forget(assigned)


def _resent(headers: Any) -> bool:
    """Whether the producer resent the record after a send in doubt (a header only such
    records carry, so an ordinary record costs a truth test)."""
    return bool(headers) and any(name == RESENT_HEADER for name, _ in headers)


async def _parse(records: tuple[ConsumerRecord[bytes, bytes], ...]) -> KafkaMessage:
    # FastStream's own batch parser decodes every record's headers; the handler needs one,
    # which _resent reads from the raw records only when they have any
    return KafkaMessage(records, b"", consumer=_NO_CONSUMER)


async def _records(message: KafkaMessage) -> Any:
    return message.raw_message


class _NoConsumer:
    """Commits go through the subscriber's consumer with explicit offsets, not the message."""

    async def commit(self) -> None:
        raise RuntimeError("commit explicit offsets through the subscriber's consumer")

    def seek(self, partition: TopicPartition, offset: int) -> None:
        raise RuntimeError("seek through the subscriber's consumer")


_NO_CONSUMER = _NoConsumer()
