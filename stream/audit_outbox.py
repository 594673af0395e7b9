"""The audit outbox: audit events appended to a Redis stream, for the drain to store.

Redis is the limiter's own store, so recording a change never waits for, or fails with,
Kafka or ClickHouse.  Entries are appended without MAXLEN: an entry not yet in the audit
log must never be trimmed away; the drain (``stream.outbox_drain``) trims the entries every
reader has acknowledged.  One entry holds one event, in the field ``e`` (its JSON, as
``stream.audit.encode`` makes it).  XADD names one key, so a Redis Cluster client works
as well as a single server's.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from stream.audit import AuditEvent, encode
from stream.events import OUTBOX_FIELD as FIELD


class AuditUnavailable(Exception):
    """The outbox did not take the event (Redis unreachable or refusing): the change it
    records must be reported as failed, or retried, never silently unaudited."""


class AuditOutbox:
    """Records audit events in the Redis stream ``stream`` (``Keyspace.audit``)."""

    def __init__(self, redis: Redis, stream: str) -> None:
        self._redis = redis
        self.stream = stream

    async def record(self, event: AuditEvent) -> None:
        """Append ``event``; AuditUnavailable if Redis did not take it."""
        try:
            await self._redis.xadd(self.stream, {FIELD: encode(event)})
        except (RedisError, OSError) as exc:
            raise AuditUnavailable(
                f"could not record audit event {event.action} {event.event_id} "
                f"in {self.stream}: {exc}"
            ) from exc
