"""The consumer's handling of one batch, the same for every transport.

A transport (Kafka through FastStream's Kafka broker, or the embedded Valkey stream through
``stream/consumer_group.py``) hands over the raw records of one batch from one partition, in order.
The handler decodes them, sends malformed ones to the dead-letter sink, skips records the
store already holds (the store keeps the source offset of every row, so a batch replayed
after a crash — cut at other offsets than the first time — is not counted twice), writes
the rest in one insert and only then returns, so that the transport acknowledges or
commits after the store accepted the batch.  (``stage`` inserts the rows and ``complete``
adds their offsets to the ledger, so that a transport writing several partitions' batches
at once adds the ledger rows of all of them in one statement, after every insert.)

A record the producer marked *resent* (the Kafka header ``stream.events.RESENT_HEADER``:
sent again after a send in doubt, so it may be at another offset already) is also checked
by its event: events the store holds, or that this batch holds unmarked, are skipped.
Records without the mark cost no such lookup.

The ledger is asked only about batches that may hold stored records.  A store that can say
which offset of a partition its ledger holds last (``LedgerEnd``) is asked that once per
partition, when the handler first sees the partition or after ``forget`` (a rebalance, a
recovery, a failed write); from then on the handler keeps, per partition, an offset above
which nothing is stored, and a batch entirely above it costs no lookup.  Only one consumer
writes a partition at a time, so nothing else stores offsets above it meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

from stream.consumer_metrics import ConsumerMetrics
from stream.events import DecisionEvent, MalformedEvent, decode, entry_offset, entry_value

log = logging.getLogger("ratewatch.stream")


class Record(NamedTuple):
    """One consumed message: its offset in its partition, its payload, and whether the
    producer resent it after a send in doubt (then its events may be stored already)."""

    offset: int
    value: bytes
    resent: bool = False


class Located(NamedTuple):
    """A decoded event and where it came from."""

    offset: int
    event: DecisionEvent


class EventStore(Protocol):
    def written_offsets(self, source: str, partition: int, offsets: Sequence[int]) -> set[int]:
        """Which of ``offsets`` of this source partition are already stored."""
        ...

    def write(self, source: str, partition: int, events: Sequence[Located], token: str) -> int:
        """Store the events in one idempotent insert (``token`` dedupes a retry)."""
        ...

    def stored_event_ids(self, events: Sequence[DecisionEvent]) -> set[str]:
        """Which of these events' ids are already stored (from whatever offset)."""
        ...


@runtime_checkable
class SharedLedger(Protocol):
    """A store that can insert a batch's rows and add their offsets to the ledger in two
    calls, so that the ledger rows of several partitions' batches are one statement."""

    def insert(
        self, source: str, partition: int, events: Sequence[Located], token: str
    ) -> Sequence[Located]:
        """Insert the events' rows only (``token`` dedupes a retry); the events stored
        (without those no column can hold)."""
        ...

    def add_to_ledger(
        self, batches: Sequence[tuple[str, int, Sequence[Located]]], token: str
    ) -> None:
        """Add the offsets of batches whose rows are inserted to the ledger, in one
        idempotent insert."""
        ...


@runtime_checkable
class LedgerEnd(Protocol):
    def last_written_offset(self, source: str, partition: int, start: int) -> int | None:
        """The highest offset of this source partition the ledger holds, if it holds any
        at or above ``start`` (None otherwise)."""
        ...


class DeadLetters(Protocol):
    def send(self, source: str, partition: int, record: Record, error: str) -> None:
        """Keep a record that could not be decoded, with the reason."""
        ...


Decoder = Callable[[Record], list[DecisionEvent]]


def decode_message(record: Record) -> list[DecisionEvent]:
    """A Kafka message holds one encoded event."""
    return [decode(record.value)]


def entry_record(entry_id: str | bytes, fields: Mapping[bytes, bytes]) -> Record:
    """An entry of the Valkey event stream as a record (``stream.events.decode_entry``
    decodes it): its id as one increasing offset, its fields as one payload."""
    return Record(entry_offset(entry_id), entry_value(fields))


@dataclass
class HandlerStats:
    written: int = 0
    skipped: int = 0
    malformed: int = 0
    batches: int = 0
    lookups: int = 0  # batches checked against the ledger (the others were above it)


class Staged(NamedTuple):
    """A batch whose rows are inserted; the ledger rows of ``stored`` are still to be added."""

    source: str
    partition: int
    stored: Sequence[Located]
    token: str
    written: int
    skipped: int
    last_offset: int | None
    newest_ms: int | None
    seconds: float


class BatchHandler:
    def __init__(
        self,
        store: EventStore,
        dead_letters: DeadLetters,
        decoder: Decoder = decode_message,
        metrics: ConsumerMetrics | None = None,
    ):
        self._store = store
        self._dead_letters = dead_letters
        self._decoder = decoder
        self.metrics = metrics or ConsumerMetrics()
        self.stats = HandlerStats()
        # per (source, partition): no offset above this one is in the ledger
        self._stored_below: dict[tuple[str, int], int] = {}

    def forget(self, source: str, partition: int) -> None:
        """Ask the ledger again before the next batch of this partition: another consumer
        may have written it (a rebalance), or a write failed half way."""
        self._stored_below.pop((source, partition), None)

    def handle(self, source: str, partition: int, records: Sequence[Record]) -> int:
        """Write one batch of one partition; returns the number of events written.

        Raises whatever the store raises: the caller must then not acknowledge the batch."""
        if not records:
            return 0
        staged = self.stage(source, partition, records)
        self.complete([staged])
        return staged.written

    def stage(self, source: str, partition: int, records: Sequence[Record]) -> Staged:
        """Insert the rows of one batch of one partition that are not stored yet; their
        ledger rows wait for ``complete`` (a store that cannot defer them adds them here).

        Raises whatever the store raises: the caller must then not acknowledge the batch."""
        started = time.perf_counter()
        located: list[Located] = []
        resent: set[int] = set()
        for record in records:
            if record.resent:
                resent.add(record.offset)
            try:
                located.extend(Located(record.offset, event) for event in self._decoder(record))
            except MalformedEvent as exc:
                self.stats.malformed += 1
                log.warning("malformed record %s/%d@%d: %s", source, partition, record.offset, exc)
                self._dead_letters.send(source, partition, record, str(exc))
        offsets = sorted({item.offset for item in located})
        token = f"{source}:{partition}:{records[0].offset}-{records[-1].offset}" if records else "-"
        stored: Sequence[Located] = ()
        written = 0
        try:
            done = self._written(source, partition, offsets)
            fresh = [item for item in located if item.offset not in done]
            if resent:
                fresh = self._drop_stored(fresh, resent)
            if fresh and isinstance(self._store, SharedLedger):
                stored = self._store.insert(source, partition, fresh, token)
                written = len(stored)
            elif fresh:
                written = self._store.write(source, partition, fresh, token)
        except BaseException:
            self.forget(source, partition)  # the ledger may hold some of the batch now
            raise
        return Staged(
            source,
            partition,
            stored,
            token,
            written,
            skipped=len(located) - len(fresh),
            last_offset=offsets[-1] if offsets else None,
            newest_ms=max((item.event.ts for item in located), default=None),
            seconds=time.perf_counter() - started,
        )

    def complete(self, staged: Sequence[Staged]) -> None:
        """Add the ledger rows of ``staged`` batches (each inserted) in one statement, then
        count them.  Raises whatever the store raises (the batches are then not done: the
        same call again adds the same rows under the same token)."""
        started = time.perf_counter()
        deferred = [batch for batch in staged if batch.stored]
        if deferred and isinstance(self._store, SharedLedger):
            token = ",".join(batch.token for batch in deferred) + "/ledger"
            try:
                self._store.add_to_ledger(
                    [(batch.source, batch.partition, batch.stored) for batch in deferred], token
                )
            except BaseException:
                for batch in deferred:
                    self.forget(batch.source, batch.partition)
                raise
        seconds = time.perf_counter() - started
        for batch in staged:
            key = (batch.source, batch.partition)
            if batch.last_offset is not None and key in self._stored_below:
                self._stored_below[key] = max(self._stored_below[key], batch.last_offset)
            self.stats.skipped += batch.skipped
            self.stats.written += batch.written
            self.stats.batches += 1
            self.metrics.batch_written(
                batch.written, batch.skipped, batch.seconds + seconds, batch.newest_ms
            )

    def _written(self, source: str, partition: int, offsets: list[int]) -> set[int]:
        """Which of ``offsets`` (sorted) the ledger holds: none, without a lookup, when they
        are all above the highest offset stored."""
        if not offsets:
            return set()
        key = (source, partition)
        below = self._stored_below.get(key)
        if below is None and isinstance(self._store, LedgerEnd):
            last = self._store.last_written_offset(source, partition, offsets[0])
            below = offsets[0] - 1 if last is None else last
            self._stored_below[key] = below
        if below is not None and offsets[0] > below:
            return set()
        self.stats.lookups += 1
        return self._store.written_offsets(source, partition, offsets)

    def _drop_stored(self, fresh: list[Located], resent: set[int]) -> list[Located]:
        """``fresh`` without the events of resent records that are stored already, or held
        by this batch's other records (the first of them kept)."""
        doubtful = [item.event for item in fresh if item.offset in resent]
        if not doubtful:
            return fresh
        seen = self._store.stored_event_ids(doubtful)
        seen.update(item.event.event_id for item in fresh if item.offset not in resent)
        kept: list[Located] = []
        for item in fresh:
            if item.offset in resent:
                if item.event.event_id in seen:
                    continue
                seen.add(item.event.event_id)
            kept.append(item)
        return kept
