"""Entries written to the Redis outboxes as the limiter, the control plane and the detectors
write them, for tests of what drains, delivers or lists them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis.asyncio import Redis

from limiter.keyspace import Keyspace
from stream.alerts import AlertEvent, AlertOutbox
from stream.audit import AuditEvent
from stream.audit_outbox import AuditOutbox
from stream.incidents import IncidentEvent, IncidentOutbox


async def record_audit(outbox: AuditOutbox, events: Sequence[AuditEvent]) -> None:
    """``events`` into the audit outbox, in order."""
    for event in events:
        await outbox.record(event)


async def record_alerts(redis: Redis, keyspace: Keyspace, *alerts: AlertEvent) -> None:
    """``alerts`` into the alert outbox of ``keyspace``, in order."""
    outbox = AlertOutbox(redis, keyspace.alerts)
    for alert in alerts:
        await outbox.record(alert)


def fill_outboxes(
    url: str,
    keyspace: Keyspace,
    events: Sequence[AuditEvent],
    alerts: Sequence[AlertEvent] = (),
    incidents: Sequence[IncidentEvent] = (),
) -> None:
    """``events`` into the audit outbox, ``alerts`` into the alert outbox, ``incidents`` into
    the incident outbox, from a test that runs no event loop of its own (one that drives
    real processes)."""

    async def go() -> None:
        client = Redis.from_url(url)
        try:
            await record_audit(AuditOutbox(client, keyspace.audit), events)
            await record_alerts(client, keyspace, *alerts)
            outbox = IncidentOutbox(client, keyspace.incident_log)
            for incident in incidents:
                await outbox.record(incident)
        finally:
            await client.aclose()

    asyncio.run(go())
