"""The decision store of the consumers on a chDB directory of the test's own, and what a
test reads back from it: for tests that drive ``BatchHandler`` without a broker or with one.

chDB opens one directory per process at a time: close the store before another opens."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from analytics.clickhouse import DECISIONS_TABLE, ROLLUP_TABLES, chdb_url, connect
from analytics.event_store import CONSUMED_TABLE, ClickHouseEventStore
from analytics.migrate import migrate
from stream.events import DecisionEvent
from stream.handlers import Located, Record

ROLLUPS = list(ROLLUP_TABLES.values())


def open_store(directory: Path) -> ClickHouseEventStore:
    """The store on a migrated chDB ``directory``, reconnecting as the consumers' does."""
    url = chdb_url(directory)
    client = connect(url)
    migrate(client)
    return ClickHouseEventStore(client, reconnect=lambda: connect(url))


class Letters:
    """The dead-letter sink, kept in a list: what was refused, where from, and why."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, Record, str]] = []

    def send(self, source: str, partition: int, record: Record, error: str) -> None:
        self.sent.append((source, partition, record, error))


def store_scalar(store: ClickHouseEventStore, sql: str) -> int:
    """The one number ``sql`` answers, on the store's own client (chDB's one engine)."""
    return int(store._run(lambda client: client.query(sql).result_rows[0][0]))


def store_totals(store: ClickHouseEventStore) -> list[int]:
    """Raw rows, ledger rows and the requests of every rollup."""
    sql = [f"SELECT count() FROM {DECISIONS_TABLE}", f"SELECT count() FROM {CONSUMED_TABLE}"]
    sql += [f"SELECT sum(requests) FROM {table}" for table in ROLLUPS]
    return [store_scalar(store, s) for s in sql]


class CountingStore:
    """The store, counting the statements a consumer makes through it: each call by name,
    and the events of each insert (``write``: an insert and its ledger rows; ``insert``: the
    insert alone, its ledger rows added later with others').  With a ``gate``, an insert
    waits until it is open (the store's thread must then not be the test's)."""

    def __init__(self, store: ClickHouseEventStore, gate: threading.Event | None = None) -> None:
        self.store = store
        self.gate = gate
        self.calls: Counter[str] = Counter()
        self.writes: list[int] = []

    def written_offsets(self, source: str, partition: int, offsets: Sequence[int]) -> set[int]:
        self.calls["written_offsets"] += 1
        return self.store.written_offsets(source, partition, offsets)

    def last_written_offset(self, source: str, partition: int, start: int) -> int | None:
        self.calls["last_written_offset"] += 1
        return self.store.last_written_offset(source, partition, start)

    def stored_event_ids(self, events: Sequence[DecisionEvent]) -> set[str]:
        self.calls["stored_event_ids"] += 1
        return self.store.stored_event_ids(events)

    def write(self, source: str, partition: int, events: Sequence[Located], token: str) -> int:
        self.calls["write"] += 1
        self._wait_for_the_gate()
        self.writes.append(len(events))
        return self.store.write(source, partition, events, token)

    def insert(
        self, source: str, partition: int, events: Sequence[Located], token: str
    ) -> list[Located]:
        self.calls["insert"] += 1
        self._wait_for_the_gate()
        self.writes.append(len(events))
        return self.store.insert(source, partition, events, token)

    def add_to_ledger(
        self, batches: Sequence[tuple[str, int, Sequence[Located]]], token: str
    ) -> None:
        self.calls["add_to_ledger"] += 1
        self.store.add_to_ledger(batches, token)

    def _wait_for_the_gate(self) -> None:
        if self.gate is not None and not self.gate.wait(30):
            raise TimeoutError("the gate of the store's inserts stayed shut")

    def plan_batches(self, plans: Sequence[tuple[str, int, int, int]]) -> None:
        self.calls["plan_batches"] += 1
        self.store.plan_batches(plans)

    def planned_batches(
        self, source: str, partition: int, start: int, limit: int
    ) -> dict[int, int]:
        self.calls["planned_batches"] += 1
        return self.store.planned_batches(source, partition, start, limit)
