"""The outbox writer: events of one contract appended to a Redis stream, for the drain.

Redis is the limiter's own store, so recording an event never waits for, or fails with,
Kafka or ClickHouse; the outbox drain (``stream.outbox_drain``) stores and publishes the
entries later.  One entry holds one event, in the field ``e`` (``OUTBOX_FIELD``: its JSON,
as the contract's codec makes it).  XADD names one key, so a Redis Cluster client works as
well as a single server's.

A stream is appended without a cap unless the contract asks for one: an audit entry not
yet stored must never be trimmed away, while alerts are notifications whose durable
record is elsewhere (see ``stream.alerts``).
"""

from __future__ import annotations

from typing import Generic, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from stream.envelope import Envelope, EnvelopeCodec
from stream.events import OUTBOX_FIELD

E = TypeVar("E", bound=Envelope)


class OutboxUnavailable(Exception):
    """The outbox did not take the event (Redis unreachable or refusing)."""


class Outbox(Generic[E]):
    """Records the events of ``codec`` in the Redis stream ``stream``.  ``unavailable`` is
    the contract's OutboxUnavailable, so a caller can tell which outbox failed; ``maxlen``
    caps the stream approximately, None appends without a cap."""

    def __init__(
        self,
        redis: Redis,
        stream: str,
        codec: EnvelopeCodec[E],
        unavailable: type[OutboxUnavailable] = OutboxUnavailable,
        *,
        maxlen: int | None = None,
    ) -> None:
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"{codec.what} outbox maxlen {maxlen!r} must be at least 1 or None")
        self._redis = redis
        self.stream = stream
        self._codec = codec
        self._unavailable = unavailable
        self._maxlen = maxlen

    async def record(self, event: E) -> None:
        """Append ``event``; the contract's OutboxUnavailable if Redis did not take it."""
        try:
            await self._redis.xadd(
                self.stream,
                {OUTBOX_FIELD: self._codec.encode(event)},
                maxlen=self._maxlen,
                approximate=True,
            )
        except (RedisError, OSError) as exc:
            raise self._unavailable(
                f"could not record {self._codec.what} event {event.describe()} "
                f"in {self.stream}: {exc}"
            ) from exc
