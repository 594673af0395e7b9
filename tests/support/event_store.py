"""The decision store of the consumers on a chDB directory of the test's own, and what a
test reads back from it: for tests that drive ``BatchHandler`` without a broker or with one.

chDB opens one directory per process at a time: close the store before another opens."""

from __future__ import annotations

from pathlib import Path

from analytics.clickhouse import DECISIONS_TABLE, ROLLUP_TABLES, chdb_url, connect
from analytics.event_store import CONSUMED_TABLE, ClickHouseEventStore
from analytics.migrate import migrate
from stream.handlers import Record

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
