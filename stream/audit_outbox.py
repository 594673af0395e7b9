"""The audit outbox: audit events appended to a Redis stream, for the drain to store.

Entries are appended without MAXLEN: an entry not yet in the audit log must never be
trimmed away; the drain (``stream.outbox_drain``) trims the entries every reader has
acknowledged.  The writer itself is the one of every outbox (``stream.outbox``).
"""

from __future__ import annotations

from redis.asyncio import Redis

from stream.audit import CODEC, AuditEvent
from stream.events import OUTBOX_FIELD as FIELD
from stream.outbox import Outbox, OutboxUnavailable

__all__ = ["FIELD", "AuditOutbox", "AuditUnavailable"]


class AuditUnavailable(OutboxUnavailable):
    """The outbox did not take the event (Redis unreachable or refusing): the change it
    records must be reported as failed, or retried, never silently unaudited."""


class AuditOutbox(Outbox[AuditEvent]):
    """Records audit events in the Redis stream ``stream`` (``Keyspace.audit``), never
    capped; ``record`` raises AuditUnavailable."""

    def __init__(self, redis: Redis, stream: str) -> None:
        super().__init__(redis, stream, CODEC, AuditUnavailable)
