"""The consumers' store in ClickHouse: decision rows with their source offsets, the ledger of
stored offsets, and the plans of the batches being written (migration 0003 says why).

``ClickHouseEventStore`` implements ``stream.handlers.EventStore``: ``written_offsets`` asks
the ledger (``last_written_offset`` where it ends, so that a consumer asks about a batch only
when it may hold stored offsets), ``stored_event_ids`` the decisions (by their primary key:
only for events the producer resent after a send in doubt), ``write`` inserts the rows
(``DecisionWriter``, with the batch's token) and then adds their offsets to the ledger, so the
ledger never names an offset whose rollups are not complete (``insert`` and
``add_to_ledger`` do the two apart, so that the ledger rows of several partitions' batches
are one statement after all their inserts).
``plan_batches``/``planned_batches`` let a consumer repeat, after a crash, the cut of the
batch it was writing: only the same insert again completes one that was cut short.

One store belongs to one thread (chDB connection handles are not shared across threads).
After a failed statement the client is replaced, when the store was given a way to connect:
a chDB connection may answer the next query with leftovers of the failed one.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar

import polars as pl
from clickhouse_connect.driver.client import Client

from analytics.clickhouse import DATABASE
from analytics.client_slot import ClientSlot
from analytics.errors import InvalidEvents
from analytics.writer import DecisionWriter, Origin
from stream.events import DecisionEvent, encode
from stream.handlers import DeadLetters, Located, Record

log = logging.getLogger("ratewatch.analytics")

T = TypeVar("T")

CONSUMED_TABLE = f"{DATABASE}.consumed"
BATCHES_TABLE = f"{DATABASE}.consumer_batches"

_INSERT_SETTINGS = {
    "insert_deduplicate": 1,
    "async_insert": 0,
}

_WRITTEN = (
    f"SELECT source_offset FROM {CONSUMED_TABLE}"
    " WHERE source = {source:String} AND source_partition = {partition:UInt32}"
    " AND source_offset BETWEEN {low:UInt64} AND {high:UInt64}"
)
# read in reverse order of the sorting key: the last granules of each part, not the partition
_LAST_WRITTEN = (
    f"SELECT source_offset FROM {CONSUMED_TABLE}"
    " WHERE source = {source:String} AND source_partition = {partition:UInt32}"
    " AND source_offset >= {start:UInt64}"
    " ORDER BY source_offset DESC LIMIT 1"
)
DECISIONS_TABLE = f"{DATABASE}.decisions"
# the table's primary key (tenant, toStartOfHour(ts), key) narrows the granules read
_STORED = (
    f"SELECT DISTINCT toString(event_id) FROM {DECISIONS_TABLE}"
    " WHERE tenant IN {tenants:Array(String)} AND key IN {keys:Array(String)}"
    " AND ts BETWEEN fromUnixTimestamp64Milli({low:Int64}, 'UTC')"
    " AND fromUnixTimestamp64Milli({high:Int64}, 'UTC')"
    " AND event_id IN {ids:Array(UUID)}"
)
_STORED_CHUNK = 2000  # events per lookup
_PLANNED = (
    f"SELECT first_offset, argMax(last_offset, planned_at) FROM {BATCHES_TABLE}"
    " WHERE source = {source:String} AND source_partition = {partition:UInt32}"
    " AND first_offset >= {start:UInt64}"
    " GROUP BY first_offset ORDER BY first_offset LIMIT {limit:UInt32}"
)


_UNSTORABLE = "no ClickHouse column can hold it (a bad UUID, or a number out of range)"


class ClickHouseEventStore:
    """``client`` is used until a statement fails; then ``reconnect`` (if given) makes the
    next one.  Events no ClickHouse column can hold go to ``rejects`` (re-encoded, with the
    reason) and the rest of their batch is written."""

    def __init__(
        self,
        client: Client,
        *,
        reconnect: Callable[[], Client] | None = None,
        rejects: DeadLetters | None = None,
    ) -> None:
        self._client = ClientSlot(client, "the event store", reconnect=reconnect)
        self.rejects = rejects
        self.rejected = 0

    # stream.handlers.EventStore

    def written_offsets(self, source: str, partition: int, offsets: Sequence[int]) -> set[int]:
        """Which of ``offsets`` the ledger holds.  One range query: a batch's offsets are
        (nearly) contiguous, so the range holds hardly more rows than the list."""
        if not offsets:
            return set()
        parameters = {
            "source": source,
            "partition": partition,
            "low": min(offsets),
            "high": max(offsets),
        }
        found = self._run(lambda c: c.query(_WRITTEN, parameters=parameters).result_columns)
        if not found:
            return set()
        return set(found[0]).intersection(offsets)

    def last_written_offset(self, source: str, partition: int, start: int) -> int | None:
        """The highest offset of the partition in the ledger, if one is at or above
        ``start`` (``stream.handlers.LedgerEnd``): bounded below, the lookup reads only the
        granules from ``start`` on, which at a consumer's start are the newest or none."""
        parameters = {"source": source, "partition": partition, "start": start}
        rows = self._run(lambda c: c.query(_LAST_WRITTEN, parameters=parameters).result_rows)
        return int(rows[0][0]) if rows else None

    def stored_event_ids(self, events: Sequence[DecisionEvent]) -> set[str]:
        """The ids of ``events`` that ``ratewatch.decisions`` already holds.  An id no UUID
        column can hold is never stored."""
        found: set[str] = set()
        for start in range(0, len(events), _STORED_CHUNK):
            chunk = events[start : start + _STORED_CHUNK]
            ids: dict[str, list[str]] = {}  # canonical form -> the events' spellings
            for event in chunk:
                try:
                    canonical = str(uuid.UUID(event.event_id))
                except (ValueError, TypeError):
                    continue
                ids.setdefault(canonical, []).append(event.event_id)
            if not ids:
                continue
            parameters = {
                "tenants": sorted({event.tenant for event in chunk}),
                "keys": sorted({event.key for event in chunk}),
                "low": min(event.ts for event in chunk),
                "high": max(event.ts for event in chunk),
                "ids": sorted(ids),
            }
            for (stored,) in self._query_rows(_STORED, parameters):
                found.update(ids.get(str(stored), ()))
        return found

    def write(self, source: str, partition: int, events: Sequence[Located], token: str) -> int:
        """Insert ``events`` with ``token``, then record their offsets in the ledger."""
        stored = self.insert(source, partition, events, token)
        if stored:
            self.add_to_ledger([(source, partition, stored)], f"{token}/ledger")
        return len(stored)

    def insert(
        self, source: str, partition: int, events: Sequence[Located], token: str
    ) -> list[Located]:
        """Insert ``events`` with ``token``, not yet in the ledger; the events stored, that
        is without those no column can hold (sent to ``rejects``)."""
        batch = list(events)
        try:
            self._insert(source, partition, batch, token)
        except InvalidEvents as exc:  # raised before anything was written
            bad = set(exc.indices)
            for index in sorted(bad):
                self._reject(source, partition, batch[index], _UNSTORABLE)
            batch = [item for i, item in enumerate(batch) if i not in bad]
            if batch:
                self._insert(source, partition, batch, token)
        return batch

    def add_to_ledger(
        self, batches: Sequence[tuple[str, int, Sequence[Located]]], token: str
    ) -> None:
        """Record the offsets of inserted batches (source, partition, events) in the ledger,
        in one insert deduplicated by ``token``: only once every insert returned, so that
        the ledger never names an offset whose rollups are not complete."""
        frames = [_ledger_rows(source, partition, events) for source, partition, events in batches]
        if not frames:
            return
        ledger = pl.concat(frames).to_arrow()
        self._run(
            lambda c: c.insert_arrow(
                CONSUMED_TABLE,
                ledger,
                settings={**_INSERT_SETTINGS, "insert_deduplication_token": token},
            )
        )

    # batch plans

    def plan_batches(self, plans: Sequence[tuple[str, int, int, int]]) -> None:
        """Record the cuts of batches about to be written, each (source, partition, first
        offset, last offset), in one insert."""
        if not plans:
            return
        rows = [list(plan) for plan in plans]
        token = "plan/" + ",".join("{}/{}/{}-{}".format(*plan) for plan in plans)
        self._run(
            lambda c: c.insert(
                BATCHES_TABLE,
                rows,
                column_names=["source", "source_partition", "first_offset", "last_offset"],
                settings={**_INSERT_SETTINGS, "insert_deduplication_token": token},
            )
        )

    def planned_batches(
        self, source: str, partition: int, start: int, limit: int
    ) -> dict[int, int]:
        """The recorded cuts (first offset → last offset) from ``start`` on, the first
        ``limit`` of them."""
        parameters = {"source": source, "partition": partition, "start": start, "limit": limit}
        rows = self._run(lambda c: c.query(_PLANNED, parameters=parameters).result_rows)
        return {int(first): int(last) for first, last in rows}

    def close(self) -> None:
        self._client.close()

    # internals

    def _insert(self, source: str, partition: int, batch: list[Located], token: str) -> int:
        origin = Origin(source, partition, [item.offset for item in batch])
        decisions = [item.event for item in batch]
        return self._run(lambda c: DecisionWriter(c).write(decisions, token, origin))

    def _reject(self, source: str, partition: int, item: Located, reason: str) -> None:
        self.rejected += 1
        log.warning(
            "event %s at %s/%d@%d cannot be stored: %s",
            item.event.event_id,
            source,
            partition,
            item.offset,
            reason,
        )
        if self.rejects is not None:
            self.rejects.send(source, partition, Record(item.offset, encode(item.event)), reason)

    def _query_rows(self, sql: str, parameters: dict[str, object]) -> Sequence[Sequence[object]]:
        return self._run(lambda c: c.query(sql, parameters=parameters).result_rows)

    def _run(self, call: Callable[[Client], T]) -> T:
        # InvalidEvents are about the events, not the connection
        return self._client.run(call, passthrough=(InvalidEvents,))


def _ledger_rows(source: str, partition: int, batch: Sequence[Located]) -> pl.DataFrame:
    """A ledger row per event (ReplacingMergeTree folds the rows of an offset that holds
    several events, as a Redis stream entry does), with the event's ts."""
    return pl.DataFrame(
        {"source_offset": [item.offset for item in batch], "ts": [item.event.ts for item in batch]},
        schema={"source_offset": pl.UInt64, "ts": pl.Int64},
    ).select(
        pl.lit(source, pl.String).alias("source"),
        pl.lit(partition, pl.UInt32).alias("source_partition"),
        "source_offset",
        pl.from_epoch("ts", time_unit="ms").dt.replace_time_zone("UTC"),
    )
