"""Writing audit events to ``ratewatch.audit_log`` (migration 0005 says why it is shaped so).

A batch is one insert with the drain's deduplication token, so the same batch retried after
a failure adds nothing; an event delivered again in another batch folds into its first row
(ReplacingMergeTree, read with FINAL).  One writer belongs to one thread, as chDB's
connections do: the caller runs ``write`` on the thread that owns the client.  After a
failed insert the client is replaced, when the writer was given a way to connect: a chDB
connection may answer the next statement with leftovers of the failed one.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Sequence

import msgspec
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from analytics.clickhouse import AUDIT_TABLE, describe
from analytics.errors import AnalyticsError
from stream.audit import AuditEvent

COLUMNS = ("ts", "event_id", "v", "tenant", "actor", "action", "target", "details", "source_ip")

_SETTINGS = {
    "insert_deduplicate": 1,
    # an async insert is deduplicated by other rules (async_insert_deduplicate)
    "async_insert": 0,
}
# sorted keys: the same details are the same text, whichever order they were given in
_details = msgspec.json.Encoder(order="sorted")


class AuditLogWriter:
    """Inserts audit events with ``client``; after a failure, with a client from
    ``reconnect`` (if given)."""

    def __init__(self, client: Client, *, reconnect: Callable[[], Client] | None = None) -> None:
        self._client: Client | None = client
        self._reconnect = reconnect

    def write(self, events: Sequence[AuditEvent], dedup_token: str) -> None:
        """Insert ``events`` in one statement.  AnalyticsError if ClickHouse refused it; the
        same batch may then be written again with the same token."""
        if not events:
            return
        if not dedup_token:
            raise AnalyticsError("an audit batch needs a non-empty deduplication token")
        rows = [_row(event) for event in events]
        client = self._client
        if client is None:
            if self._reconnect is None:
                raise AnalyticsError("the audit log writer's ClickHouse client is closed")
            client = self._client = self._reconnect()
        try:
            client.insert(
                AUDIT_TABLE,
                rows,
                column_names=COLUMNS,
                settings={**_SETTINGS, "insert_deduplication_token": dedup_token},
            )
        except Exception as exc:
            if self._reconnect is not None:
                self._client = None
                with contextlib.suppress(Exception):
                    client.close()
            if isinstance(exc, ClickHouseError):
                raise AnalyticsError(
                    f"insert of {len(rows)} audit events into {AUDIT_TABLE} failed: {describe(exc)}"
                ) from exc
            raise

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _row(event: AuditEvent) -> list[object]:
    # ts as the column's raw ticks (epoch ms for DateTime64(3)): exact, no float in between
    return [
        event.ts,
        uuid.UUID(event.event_id),
        event.v,
        event.tenant,
        event.actor,
        event.action,
        event.target,
        _details.encode(event.details).decode(),
        event.source_ip,
    ]
