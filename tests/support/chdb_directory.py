"""A chDB directory of the test's own: its client (closed afterwards, migrated or not), the
rows a query answers, and decisions written to it as the consumers write them.

chDB opens one directory per process at a time: close a client before another opens."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from analytics.clickhouse import chdb_url, connect
from analytics.migrate import migrate
from analytics.writer import DecisionWriter
from stream.events import DecisionEvent


@contextlib.contextmanager
def chdb_client(directory: Path, *, migrated: bool = True) -> Iterator[Client]:
    """A client of ``directory`` (migrated unless told otherwise), closed on the way out."""
    client = connect(chdb_url(directory))
    try:
        if migrated:
            migrate(client)
        yield client
    finally:
        client.close()


def rows(client: Client, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in client.query(sql).result_rows]


def write_in_batches(
    client: Client, events: Sequence[DecisionEvent], name: str, batch: int
) -> None:
    """``events`` in inserts of ``batch``, as consumers write them: rollup rows stay
    unmerged.  Each insert's deduplication token is ``name`` and its first index."""
    writer = DecisionWriter(client)
    for start in range(0, len(events), batch):
        writer.write(events[start : start + batch], f"{name}/{start}")
