"""Audit events as rows of ``ratewatch.audit_log`` (migration 0005 says why it is shaped
so); ``analytics.event_log`` does the writing."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import msgspec
from clickhouse_connect.driver.client import Client

from analytics.event_log import EventLogWriter
from analytics.tables import AUDIT_TABLE
from stream.audit import AuditEvent

COLUMNS = ("ts", "event_id", "v", "tenant", "actor", "action", "target", "details", "source_ip")

# sorted keys: the same details are the same text, whichever order they were given in
_details = msgspec.json.Encoder(order="sorted")


class AuditLogWriter(EventLogWriter[AuditEvent]):
    def __init__(self, client: Client, *, reconnect: Callable[[], Client] | None = None) -> None:
        super().__init__(client, AUDIT_TABLE, COLUMNS, audit_row, reconnect=reconnect)


def audit_row(event: AuditEvent) -> list[object]:
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
