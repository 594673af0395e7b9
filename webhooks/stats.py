"""Webhook delivery counts of the whole deployment: every attempt's outcome, counted in
Redis (``Keyspace.webhook_stats``) by the sender that made it, and read together with the
queue's depth by the limiter's ``/metrics``.

They are kept in Redis, not in a process: attempts are made by any number of pipeline
workers, and ``/metrics`` is answered by any limiter instance or worker process, so each
must report the same totals; counts kept per process would be counted once per process
that reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from limiter.keyspace import Keyspace
from webhooks.queue import QueueUnavailable
from webhooks.registry import OUTCOMES


@dataclass(frozen=True, slots=True)
class DeliveryCounts:
    """Attempts so far by outcome (every outcome present, 0 before its first), and the
    deliveries queued: due, scheduled for a retry, or being attempted."""

    outcomes: dict[str, int]
    queue_depth: int


class DeliveryStats:
    def __init__(self, redis: Redis, keyspace: Keyspace):
        self._redis = redis
        self._stats = keyspace.webhook_stats
        self._due = keyspace.webhook_due

    async def count(self, outcome: str) -> None:
        """Count one attempt of ``outcome`` (one of ``OUTCOMES``)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"webhook attempt outcome {outcome!r} is not one of {OUTCOMES}")
        try:
            await self._redis.hincrby(self._stats, outcome, 1)
        except RedisError as exc:
            raise QueueUnavailable(f"could not count a {outcome} attempt: {exc}") from exc

    async def read(self) -> DeliveryCounts:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._stats)
                pipe.zcard(self._due)
                counted, depth = await pipe.execute()
        except RedisError as exc:
            raise QueueUnavailable(f"could not read the delivery counts: {exc}") from exc
        found = {_text(name): int(value) for name, value in counted.items()}
        return DeliveryCounts({outcome: found.get(outcome, 0) for outcome in OUTCOMES}, int(depth))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
