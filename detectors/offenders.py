"""Repeat offenders: how often a subject was blocked lately, and how long its next block is.

A subject's offences are a hash ``<tenant tag>:off:<scope>:<value>``
(``Keyspace.offences``) with ``count`` and ``last_ms`` (epoch ms of the last offence).  The
key expires ``decay_seconds`` after the end of the subject's last block, so offences decay:
a subject that stays clean that long starts again at the base TTL.  Counting from the end
of the block, not from the offence, matters: a block as long as the decay period would
otherwise end with a clean record.

The same Redis state coordinates the actions taken on offenders (``detectors.actions``):
``claim`` takes a short-lived per-subject lease (``SET NX PX`` on
``<tenant tag>:claim:<scope>:<value>``), so that of several processes acting on one subject
at once exactly one counts the offence and makes the block; ``throttle`` lets an alert go
out at most once per period per tenant (``SET NX EX`` on ``<tenant tag>:throttle:<what>``).

Escalation doubles the TTL per offence, up to a cap (``escalated_ttl``).  Defaults: a base
of 15 minutes stops a burst and costs an attacker its run while a false positive heals
itself soon; a cap of 24 hours keeps a dynamic block a day at most (longer is a manual
decision); the decay of 24 hours forgives a subject after a clean day.  From the base to
the cap takes eight offences: 15 min, 30 min, 1 h, 2 h, 4 h, 8 h, 16 h, 24 h.
"""

from __future__ import annotations

import math
import secrets
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from limiter.errors import StoreUnavailable
from limiter.keyspace import Keyspace
from limiter.scripts import register_script

DEFAULT_BASE_TTL = 15 * 60
DEFAULT_MAX_TTL = 24 * 3600
DEFAULT_DECAY_SECONDS = 24 * 3600


def escalated_ttl(
    base_seconds: int = DEFAULT_BASE_TTL, offence: int = 1, cap_seconds: int = DEFAULT_MAX_TTL
) -> int:
    """The TTL of a subject's ``offence``-th block: ``base * 2 ** (offence - 1)``, at most
    ``cap_seconds``.  ValueError naming a value out of range."""
    if base_seconds < 1:
        raise ValueError(f"base ttl {base_seconds!r} must be at least 1 second")
    if cap_seconds < base_seconds:
        raise ValueError(f"ttl cap {cap_seconds!r} must be at least the base ttl {base_seconds}")
    if offence < 1:
        raise ValueError(f"offence {offence!r} must be at least 1")
    # past the cap's doubling count the power only grows; stop before it gets huge
    doublings = min(offence - 1, math.ceil(math.log2(cap_seconds / base_seconds)) + 1)
    return min(cap_seconds, base_seconds << doublings)


class OffenderHistory:
    """Offence counts per tenant, scope and subject, decaying after ``decay_seconds``."""

    def __init__(
        self, redis: Redis, keyspace: Keyspace, *, decay_seconds: int = DEFAULT_DECAY_SECONDS
    ):
        if decay_seconds < 1:
            raise ValueError(f"offence decay {decay_seconds!r} must be at least 1 second")
        self._redis = redis
        self._keyspace = keyspace
        self.decay_seconds = decay_seconds
        self._release = register_script(redis, "detectors", "claim_release.lua")

    async def offences(self, tenant: str, scope: str, subject: str) -> int:
        """The subject's offences that have not decayed (0 for none)."""
        key = self._keyspace.offences(tenant, scope, subject)
        try:
            count = await self._redis.hget(key, "count")
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return int(count) if count is not None else 0

    async def record_offence(
        self, tenant: str, scope: str, subject: str, *, blocked_for: float = 0
    ) -> int:
        """Count an offence whose block lasts ``blocked_for`` seconds; its number (1 for the
        first).  The history then lives until ``decay_seconds`` after that block ends."""
        key = self._keyspace.offences(tenant, scope, subject)
        now_ms = time.time_ns() // 1_000_000
        keep_ms = int((max(0.0, blocked_for) + self.decay_seconds) * 1000)
        try:
            # one MULTI/EXEC: a count without its expiry would never decay
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, "count", 1)
                pipe.hset(key, "last_ms", now_ms)
                # blocks only grow with offences, so a later expiry is never the sooner one
                pipe.pexpire(key, keep_ms)
                count, *_ = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return int(count)

    async def forget(self, tenant: str, scope: str, subject: str) -> None:
        """Clear the subject's history (a block lifted as a false positive, say)."""
        try:
            await self._redis.delete(self._keyspace.offences(tenant, scope, subject))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc

    async def claim(self, tenant: str, scope: str, subject: str, ttl_ms: int) -> str | None:
        """A token that holds the subject for ``ttl_ms``, or None while another holds it."""
        token = secrets.token_hex(8)
        key = self._keyspace.action_claim(tenant, scope, subject)
        try:
            taken = await self._redis.set(key, token, nx=True, px=ttl_ms)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return token if taken else None

    async def release(self, tenant: str, scope: str, subject: str, token: str) -> None:
        """Give the subject up, if ``token`` still holds it."""
        key = self._keyspace.action_claim(tenant, scope, subject)
        try:
            await self._release(keys=[key], args=[token])
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc

    async def throttle(self, tenant: str, what: str, seconds: int) -> bool:
        """True at most once per ``seconds`` per tenant and ``what``: whether to go ahead."""
        key = self._keyspace.throttle(tenant, what)
        try:
            return bool(await self._redis.set(key, "1", nx=True, ex=seconds))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
