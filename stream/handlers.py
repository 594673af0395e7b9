"""The consumer's handling of one batch, the same for every transport.

A transport (Kafka through FastStream's Kafka broker, or the embedded Valkey stream through
``stream/consumer_group.py``) hands over the raw records of one batch from one partition, in order.
The handler decodes them, sends malformed ones to the dead-letter sink, skips records the
store already holds (the store keeps the source offset of every row, so a batch replayed
after a crash — cut at other offsets than the first time — is not counted twice), writes
the rest in one insert and only then returns, so that the transport acknowledges or
commits after the store accepted the batch.

A record the producer marked *resent* (the Kafka header ``stream.events.RESENT_HEADER``:
sent again after a send in doubt, so it may be at another offset already) is also checked
by its event: events the store holds, or that this batch holds unmarked, are skipped.
Records without the mark cost no such lookup.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

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

    def handle(self, source: str, partition: int, records: Sequence[Record]) -> int:
        """Write one batch of one partition; returns the number of events written.

        Raises whatever the store raises: the caller must then not acknowledge the batch."""
        if not records:
            return 0
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
        done = self._store.written_offsets(source, partition, offsets) if offsets else set()
        fresh = [item for item in located if item.offset not in done]
        if resent:
            fresh = self._drop_stored(fresh, resent)
        self.stats.skipped += len(located) - len(fresh)
        written = 0
        if fresh:
            token = f"{source}:{partition}:{records[0].offset}-{records[-1].offset}"
            written = self._store.write(source, partition, fresh, token)
        self.stats.written += written
        self.stats.batches += 1
        seconds = time.perf_counter() - started
        newest = max((item.event.ts for item in located), default=None)
        self.metrics.batch_written(written, len(located) - len(fresh), seconds, newest)
        return written

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
