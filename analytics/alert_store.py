"""Alert events as rows of ``ratewatch.alerts`` (migration 0006 says why it is shaped so);
``analytics.event_log`` does the writing."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import msgspec
from clickhouse_connect.driver.client import Client

from analytics.event_log import EventLogWriter
from analytics.tables import ALERTS_TABLE
from stream.alerts import AlertEvent

COLUMNS = (
    "ts",
    "event_id",
    "v",
    "tenant",
    "kind",
    "scope",
    "subject",
    "block_id",
    "mode",
    "ttl_seconds",
    "offence",
    "detector",
    "score",
    "explanation",
)

_explanation = msgspec.json.Encoder(order="sorted")


class AlertLogWriter(EventLogWriter[AlertEvent]):
    def __init__(self, client: Client, *, reconnect: Callable[[], Client] | None = None) -> None:
        super().__init__(client, ALERTS_TABLE, COLUMNS, alert_row, reconnect=reconnect)


def alert_row(event: AlertEvent) -> list[object]:
    explanation = event.explanation
    detector = explanation.get("detector")
    score = explanation.get("score")
    return [
        event.ts,
        uuid.UUID(event.event_id),
        event.v,
        event.tenant,
        event.kind,
        event.scope,
        event.subject,
        event.block_id or "",
        event.mode,
        event.ttl_seconds,
        event.offence,
        detector if isinstance(detector, str) else "",
        float(score) if isinstance(score, int | float) and not isinstance(score, bool) else 0.0,
        _explanation.encode(explanation).decode(),
    ]
