"""The outbox drain: entries of a Redis outbox stream into their ClickHouse table (and onto
their Kafka topic), each acknowledged only after it was stored.

Three outboxes are drained so: the audit outbox (``stream.audit_outbox``, into
``ratewatch.audit_log`` and ``ratewatch.audit.v1``), the alert outbox (``stream.alerts``,
into ``ratewatch.alerts`` and ``ratewatch.alerts.v1``) and the incident outbox
(``stream.incidents``, into ``ratewatch.incidents`` and ``ratewatch.incidents.v1``).
``decode`` is the outbox's contract decoder, which raises ``stream.events.MalformedEvent``
for an entry that is not its event.

- A consumer group (``stream.consumer_group``) reads the outbox from its first entry on.
  A batch is decoded; the events are written (``write``: the insert, run on the store's
  thread), then published (``publish``, optional: Kafka in the distributed deployment),
  and only then acknowledged.  Entries that ``decode`` refuses go to a dead-letter stream
  with the reason and are acknowledged with the rest: they never hold up the others.
  A second group reading the same outbox (the webhook deliveries of the alerts,
  ``webhooks/worker.py``) passes ``record_malformed=False``: it only logs them, as
  the outbox's own drain records them once.
- A failed write or publish is retried with backoff, the same batch with the same
  deduplication token, until it succeeds or the drain stops (leaving the batch pending).
- A drain first reads again what its consumer read and never acknowledged (a previous run
  of it, killed or stopped mid-batch), and from time to time claims entries another
  consumer has left pending for a minute (a drain that died).  Such an entry may be stored
  twice: the tables fold repeats (migrations 0005, 0006, 0012) and readers of the topic
  deduplicate by ``event_id``.
- Acknowledged entries are trimmed as the decision stream's are
  (``stream.consumer_group.trim_acknowledged``); the outbox itself never caps the stream.

The Redis client must return bytes (no ``decode_responses``), as the project's clients do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from stream.consumer_group import FROM_START, ConsumerGroup, Entry, trim_acknowledged
from stream.events import DEAD_LETTER_SUFFIX, MalformedEvent
from stream.events import OUTBOX_FIELD as FIELD
from stream.outbox_metrics import OutboxMetrics

log = logging.getLogger("ratewatch.outbox")

AUDIT_GROUP = "ratewatch-audit"
ALERT_GROUP = "ratewatch-alerts"
INCIDENT_GROUP = "ratewatch-incidents"
DEAD_LETTER_MAX_LENGTH = 100_000

E = TypeVar("E")
# (events, deduplication token) -> stored; raises if not
Write = Callable[[Sequence[E], str], Awaitable[object]]
# events -> acknowledged by the broker; raises if not
Publish = Callable[[Sequence[E]], Awaitable[object]]


@dataclass
class DrainStats:
    written: int = 0
    malformed: int = 0
    batches: int = 0
    claimed: int = 0
    failures: int = 0


class _Stopping(Exception):
    """The drain stops while a batch waits for the store or the broker: leave it pending."""


class OutboxDrain(Generic[E]):
    """Drains the outbox stream ``stream``: entries decoded by ``decode``, through ``write``
    (and ``publish``).  ``name`` says what the events are, in logs.

    ``consumer`` names this drain in the group: a drain restarted under the same name
    resumes its own unacknowledged entries at once; another name's are claimed after
    ``claim_idle_ms``."""

    def __init__(
        self,
        redis: Redis,
        stream: str,
        decode: Callable[[bytes], E],
        write: Write[E],
        publish: Publish[E] | None = None,
        *,
        name: str,
        group: str,
        consumer: str | None = None,
        dead_letters: str | None = None,
        count: int = 500,
        block_ms: int = 1000,
        claim_idle_ms: int = 60_000,
        max_pause: float = 5.0,
        trim_interval: float = 5.0,
        record_malformed: bool = True,
        metrics: OutboxMetrics | None = None,
    ) -> None:
        if count < 1 or block_ms < 1 or claim_idle_ms < 1:
            raise ValueError(
                f"count {count}, block_ms {block_ms} and claim_idle_ms {claim_idle_ms} "
                "must all be positive"
            )
        self._redis = redis
        self.stream = stream
        self._decode = decode
        self.name = name
        self._write = write
        self._publish = publish
        self.consumer = consumer or name
        self.group = group
        self.dead_letters = dead_letters or stream + DEAD_LETTER_SUFFIX
        self._group = ConsumerGroup(
            redis,
            stream,
            group,
            self.consumer,
            start=FROM_START,
            count=count,
            claim_idle_ms=claim_idle_ms,
        )
        self._block_ms = block_ms
        self._max_pause = max_pause
        self._trim_interval = trim_interval
        self._record_malformed = record_malformed
        self.stats = DrainStats()
        self._counts = (metrics or OutboxMetrics()).bind(name)
        self._stop = asyncio.Event()
        self._own_pending = True  # re-read what this consumer left unacknowledged first

    async def run(self, stop: asyncio.Event) -> None:
        """Drain until ``stop`` is set; the batch in hand is finished (or, if the store is
        failing, left pending).  Redis errors are logged and retried."""
        self._stop = stop
        trimmer = asyncio.create_task(
            trim_acknowledged(self._redis, self.stream, self._trim_interval),
            name=f"ratewatch-{self.name}-trim",
        )
        pause = 0.25
        log.info(
            "draining %s outbox %s as %s/%s", self.name, self.stream, self.group, self.consumer
        )
        try:
            while not stop.is_set():
                try:
                    await self.drain_once()
                except _Stopping:
                    log.warning("stopping with a %s batch unstored: it is read again", self.name)
                    break
                except (RedisError, OSError) as exc:
                    self.stats.failures += 1
                    self._counts.failures.inc()
                    self._own_pending = True  # an XACK may be among what failed
                    log.error(
                        "%s outbox %s failed (%s); retrying in %.1fs",
                        self.name,
                        self.stream,
                        exc,
                        pause,
                    )
                    await self._pause(pause)
                    pause = min(self._max_pause, pause * 2)
                else:
                    pause = 0.25
        finally:
            trimmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trimmer
            log.info("%s drain stopped: %s", self.name, self.stats)

    async def drain_once(self) -> int:
        """Handle one batch: this consumer's unacknowledged entries while there are any,
        then entries abandoned by other consumers (when a sweep is due), then new entries
        (waiting up to ``block_ms`` for some).  The number of entries handled."""
        if self._own_pending:
            entries = await self._group.read_pending()
            if entries:
                await self._handle(entries)
                return len(entries)
            self._own_pending = False
        entries = await self._group.claim_abandoned()
        if entries:
            log.info("claimed %d %s entries abandoned by another consumer", len(entries), self.name)
            self.stats.claimed += len(entries)
            self._counts.claimed.inc(len(entries))
            await self._handle(entries)
            return len(entries)
        entries = await self._group.read_new(self._block_ms)
        await self._handle(entries)
        return len(entries)

    async def ensure_group(self) -> None:
        """The group, at the stream's first entry (and the stream, if need be): a group
        created at the end would skip every event recorded before the first drain ran.
        Reading creates it too; this only makes it exist before the first read."""
        await self._group.ensure()

    # one batch ------------------------------------------------------------------------

    async def _handle(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        events: list[E] = []
        stored_ids: list[bytes] = []
        malformed: list[tuple[bytes, Mapping[bytes, bytes], str]] = []
        for entry_id, fields in entries:
            if not fields:
                continue  # deleted since it was read: nothing left to store
            try:
                events.append(self._decode(_field_of(entry_id, fields)))
                stored_ids.append(entry_id)
            except MalformedEvent as exc:
                malformed.append((entry_id, fields, str(exc)))
        if events:
            token = f"{self.stream}/" + hashlib.sha256(b",".join(stored_ids)).hexdigest()[:32]
            await self._until_done("write", self._write, events, token)
            if self._publish is not None:
                await self._until_done("publish", self._publish, events)
        # after the store took the batch: a drain stopped before this keeps the entries
        # pending, and their dead letters are not written twice
        for entry_id, fields, error in malformed:
            if self._record_malformed:
                await self._dead_letter(entry_id, fields, error)
            else:
                log.warning("skipping %s outbox entry %s: %s", self.name, _text(entry_id), error)
        await self._group.ack([entry_id for entry_id, _ in entries])
        self.stats.written += len(events)
        self.stats.malformed += len(malformed)
        self.stats.batches += 1
        self._counts.stored.inc(len(events))
        if self._publish is not None:
            self._counts.published.inc(len(events))
        if self._record_malformed:
            self._counts.dead_lettered.inc(len(malformed))

    async def _until_done(
        self, what: str, call: Callable[..., Awaitable[object]], *args: Any
    ) -> None:
        pause = 0.25
        while True:
            try:
                await call(*args)
                return
            except Exception as exc:  # the store's or the broker's failure: retried
                self.stats.failures += 1
                self._counts.failures.inc()
                if self._stop.is_set():
                    raise _Stopping from exc
                log.error("%s batch %s failed, retrying in %.1fs: %s", self.name, what, pause, exc)
                if await self._pause(pause):
                    raise _Stopping from exc
                pause = min(self._max_pause, pause * 2)

    async def _dead_letter(
        self, entry_id: bytes, fields: Mapping[bytes, bytes], error: str
    ) -> None:
        log.warning(
            "%s outbox entry %s is not a %s event: %s",
            self.name,
            _text(entry_id),
            self.name,
            error,
        )
        # the entry's own fields under raw:<name>, so no field of it can shadow ours
        letter: dict[FieldT, EncodableT] = {
            "source": self.stream,
            "entry_id": entry_id,
            "error": error,
        }
        letter.update({b"raw:" + name: value for name, value in fields.items()})
        await self._redis.xadd(
            self.dead_letters, letter, maxlen=DEAD_LETTER_MAX_LENGTH, approximate=True
        )

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the drain is stopped first; whether it was."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()


def _field_of(entry_id: bytes, fields: Mapping[bytes, bytes]) -> bytes:
    value = fields.get(FIELD)
    if value is None:
        names = ", ".join(sorted(_text(name) for name in fields))
        raise MalformedEvent(
            f"outbox entry {_text(entry_id)} has no field {_text(FIELD)!r} (it has {names})"
        )
    return value


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
