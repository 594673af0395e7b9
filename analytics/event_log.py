"""Writing outbox events (audit entries, alerts) to their ClickHouse table.

A batch is one insert with the drain's deduplication token, so the same batch retried after
a failure adds nothing; an event delivered again in another batch folds into its first row
(the tables are ReplacingMergeTrees on the event id, read with FINAL).  One writer belongs
to one thread, as chDB's connections do: the caller runs ``write`` on the thread that owns
the client.  After a failed insert the client is replaced, when the writer was given a way
to connect: a chDB connection may answer the next statement with leftovers of the failed
one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from clickhouse_connect.driver.client import Client

from analytics.client_slot import ClientSlot
from analytics.errors import AnalyticsError

E = TypeVar("E")

_SETTINGS = {
    "insert_deduplicate": 1,
    # an async insert is deduplicated by other rules (async_insert_deduplicate)
    "async_insert": 0,
}


class EventLogWriter(Generic[E]):
    """Inserts events into ``table`` as rows of ``columns`` made by ``row``, with
    ``client``; after a failure, with a client from ``reconnect`` (if given)."""

    def __init__(
        self,
        client: Client,
        table: str,
        columns: Sequence[str],
        row: Callable[[E], list[object]],
        *,
        reconnect: Callable[[], Client] | None = None,
    ) -> None:
        self._client = ClientSlot(client, f"the writer of {table}", reconnect=reconnect)
        self.table = table
        self._columns = tuple(columns)
        self._row = row

    def write(self, events: Sequence[E], dedup_token: str) -> None:
        """Insert ``events`` in one statement.  AnalyticsError if ClickHouse refused it; the
        same batch may then be written again with the same token."""
        if not events:
            return
        if not dedup_token:
            raise AnalyticsError(f"a batch for {self.table} needs a non-empty deduplication token")
        rows = [self._row(event) for event in events]
        self._client.run(
            lambda client: client.insert(
                self.table,
                rows,
                column_names=self._columns,
                settings={**_SETTINGS, "insert_deduplication_token": dedup_token},
            ),
            failure=f"insert of {len(rows)} events into {self.table} failed",
        )

    def close(self) -> None:
        self._client.close()
