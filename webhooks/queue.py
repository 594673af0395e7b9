"""The webhook delivery queue: every delivery not yet done, in Redis, by due time.

A delivery is one event for one webhook.  Its id, ``<webhook id>_<event id>``, is the
``webhook-id`` header of every attempt, so a receiver can drop repeats.  Two keys under one
hash tag of their own (``Keyspace.webhook_due``, ``Keyspace.webhook_pending``):

- ``due``: sorted set, delivery id -> the epoch second its next attempt is due;
- ``pending``: hash, delivery id -> the delivery (JSON, with the attempts made so far).

A sender *leases* due deliveries: their due time moves ``lease_seconds`` ahead, so a sender
that dies mid-attempt leaves them to be tried again once the lease ends; an attempt
finishes by completing the delivery (gone) or scheduling its retry.  Nothing but a
completion removes one, so a delivery outlives any restart.  Leasing skips the deliveries
of a webhook that already has ``per_webhook`` attempts in flight, pushing them a little
back, so one endpoint's backlog never holds up the others'.  A lease and a retry's
reschedule are each one Lua script (``lua/webhook_lease.lua``, ``lua/webhook_reschedule.lua``),
so two senders never lease one delivery.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from limiter.keyspace import Keyspace
from limiter.scripts import register_script

LEASE_SECONDS = 60.0
DEFER_SECONDS = 1.0
MIN_SCAN = 256  # due deliveries a lease looks at, at least


class Delivery(msgspec.Struct, kw_only=True, frozen=True):
    """One event for one webhook.  ``timestamp`` is the event's time (ISO 8601), ``data``
    the event itself; ``attempts`` how many attempts were made so far."""

    id: str
    tenant: str
    webhook_id: str
    event_id: str
    type: str
    timestamp: str
    data: dict[str, Any]
    attempts: int = 0
    queued_at: float = 0.0


def delivery_id(webhook_id: str, event_id: str) -> str:
    return f"{webhook_id}_{event_id}"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Delivery)


class QueueUnavailable(Exception):
    """Redis did not take or give deliveries."""


class DeliveryQueue:
    def __init__(self, redis: Redis, keyspace: Keyspace, *, lease_seconds: float = LEASE_SECONDS):
        self._redis = redis
        self._due = keyspace.webhook_due
        self._pending = keyspace.webhook_pending
        self.lease_seconds = lease_seconds
        self._lease = register_script(redis, "webhooks", "webhook_lease.lua")
        self._reschedule = register_script(redis, "webhooks", "webhook_reschedule.lua")

    async def enqueue(self, deliveries: Sequence[Delivery], at: float | None = None) -> None:
        """Queue ``deliveries``, due ``at`` (now).  A delivery already queued is left as it
        is (with its attempts), so queueing the same event again sends nothing twice."""
        if not deliveries:
            return
        when = time.time() if at is None else at
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for delivery in deliveries:
                    pipe.hsetnx(self._pending, delivery.id, _encoder.encode(delivery))
                    pipe.zadd(self._due, {delivery.id: when}, nx=True)
                await pipe.execute()
        except RedisError as exc:
            raise QueueUnavailable(f"could not queue {len(deliveries)} deliveries: {exc}") from exc

    async def lease(
        self, limit: int, busy: Mapping[str, int] | None = None, per_webhook: int = 4
    ) -> tuple[list[Delivery], int]:
        """Up to ``limit`` due deliveries, now leased to the caller, and how many due ones
        were pushed back instead, as their webhook had ``per_webhook`` attempts in flight
        (``busy`` counts the caller's attempts in flight per webhook id)."""
        if limit < 1:
            return [], 0
        now = time.time()
        args: list[str | int | float] = [
            now,
            now + self.lease_seconds,
            now + DEFER_SECONDS,
            limit,
            max(MIN_SCAN, 4 * limit),
            per_webhook,
        ]
        for webhook_id, count in (busy or {}).items():
            args += [webhook_id, count]
        try:
            reply = await self._lease(keys=[self._due, self._pending], args=args)
        except RedisError as exc:
            raise QueueUnavailable(f"could not lease deliveries: {exc}") from exc
        deferred, pairs = int(reply[0]), reply[1:]
        leased: list[Delivery] = []
        for raw_id, record in zip(pairs[::2], pairs[1::2], strict=True):
            if record is None:  # dropped while due: nothing left to deliver
                await self._drop(_text(raw_id))
                continue
            try:
                leased.append(_decoder.decode(record))
            except msgspec.DecodeError:
                await self._drop(_text(raw_id))
        return leased, deferred

    async def complete(self, delivery: Delivery) -> None:
        """The delivery is done (delivered, failed for good, or its webhook is gone)."""
        await self._drop(delivery.id)

    async def retry(self, delivery: Delivery, at: float) -> bool:
        """Count the attempt made and schedule the next at ``at``; False if the delivery
        was dropped meanwhile."""
        record = msgspec.structs.replace(delivery, attempts=delivery.attempts + 1)
        try:
            done = await self._reschedule(
                keys=[self._due, self._pending], args=[delivery.id, _encoder.encode(record), at]
            )
        except RedisError as exc:
            raise QueueUnavailable(f"could not schedule delivery {delivery.id}: {exc}") from exc
        return bool(done)

    async def purge(self, webhook_id: str) -> int:
        """Drop every queued delivery of ``webhook_id``; how many there were."""
        try:
            ids = [
                _text(member)
                async for member, _ in self._redis.zscan_iter(
                    self._due, match=delivery_id(webhook_id, "*"), count=500
                )
            ]
            for start in range(0, len(ids), 500):
                await self._drop(*ids[start : start + 500])
        except RedisError as exc:
            raise QueueUnavailable(f"could not drop the deliveries of {webhook_id}: {exc}") from exc
        return len(ids)

    async def scheduled(self, webhook_id: str | None = None) -> list[tuple[Delivery, float]]:
        """The queued deliveries (of ``webhook_id``) with their due times, soonest first."""
        try:
            due: list[tuple[bytes, float]]
            due = await self._redis.zrange(self._due, 0, -1, withscores=True)  # type: ignore[assignment]
            records = await self._redis.hgetall(self._pending)
        except RedisError as exc:
            raise QueueUnavailable(f"could not read the queue: {exc}") from exc
        found = []
        for member, score in due:
            record = records.get(member)
            if record is None:
                continue
            delivery = _decoder.decode(record)
            if webhook_id is None or delivery.webhook_id == webhook_id:
                found.append((delivery, float(score)))
        return found

    async def _drop(self, *ids: str) -> None:
        if not ids:
            return
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._due, *ids)
                pipe.hdel(self._pending, *ids)
                await pipe.execute()
        except RedisError as exc:
            raise QueueUnavailable(f"could not drop deliveries: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
