"""Incident events as rows of ``ratewatch.incidents`` (migration 0012 says why it is shaped
so); ``analytics.event_log`` does the writing."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import msgspec
from clickhouse_connect.driver.client import Client

from analytics.event_log import EventLogWriter
from analytics.tables import INCIDENTS_TABLE
from stream.incidents import IncidentEvent

COLUMNS = (
    "ts",
    "event_id",
    "v",
    "tenant",
    "kind",
    "incident_id",
    "family",
    "state",
    "mode",
    "detector",
    "detector_version",
    "opened_at",
    "first_seen",
    "last_seen",
    "closed_at",
    "members_count",
    "counts",
    "members",
    "member_outcomes",
    "member_blocks",
    "joined",
    "reasons",
    "evidence",
)

_evidence = msgspec.json.Encoder(order="sorted")


class IncidentLogWriter(EventLogWriter[IncidentEvent]):
    def __init__(self, client: Client, *, reconnect: Callable[[], Client] | None = None) -> None:
        super().__init__(client, INCIDENTS_TABLE, COLUMNS, incident_row, reconnect=reconnect)


def incident_row(event: IncidentEvent) -> list[object]:
    members = event.members
    return [
        event.ts,
        uuid.UUID(event.event_id),
        event.v,
        event.tenant,
        event.kind,
        event.incident_id,
        event.family,
        event.state,
        event.mode,
        event.detector,
        event.detector_version,
        event.opened_at,
        event.first_seen,
        event.last_seen,
        event.closed_at,
        event.counts.get("members", len(members)),
        dict(event.counts),
        [m.ip for m in members],
        [m.outcome for m in members],
        [m.block_id or "" for m in members],
        list(event.joined),
        list(event.reasons),
        _evidence.encode(event.evidence).decode(),
    ]
