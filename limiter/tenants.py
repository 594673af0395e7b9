"""Per-tenant settings kept in the tenant registry (``rw:tenants``)."""

from __future__ import annotations

import enum
import json

from redis.asyncio import Redis
from redis.exceptions import RedisError

from limiter.errors import InvalidInput, StoreUnavailable
from limiter.keyspace import Keyspace


class FailMode(enum.StrEnum):
    """What the limiter answers while Redis is unreachable."""

    OPEN = "open"  # decide from the local in-memory store, reason "fail_open"
    CLOSED = "closed"  # deny, reason "fail_closed"


def parse_fail_mode(value: str) -> FailMode:
    try:
        return FailMode(value)
    except ValueError:
        raise InvalidInput(f"fail mode {value!r} is not one of 'open', 'closed'") from None


class TenantSettingsStore:
    def __init__(self, redis: Redis, keyspace: Keyspace):
        self._redis = redis
        self._keyspace = keyspace

    async def get(self, tenant: str) -> dict[str, object]:
        try:
            raw = await self._redis.hget(self._keyspace.tenants, tenant)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        settings: dict[str, object] = json.loads(raw) if raw else {}
        return settings

    async def fail_mode(self, tenant: str) -> FailMode | None:
        """The tenant's own fail mode, or None to follow the global setting."""
        value = (await self.get(tenant)).get("fail_mode")
        return FailMode(str(value)) if value else None

    async def set_fail_mode(self, tenant: str, mode: FailMode | None) -> dict[str, object]:
        settings = await self.get(tenant)
        if mode is None:
            settings.pop("fail_mode", None)
        else:
            settings["fail_mode"] = mode.value
        try:
            await self._redis.hset(self._keyspace.tenants, tenant, json.dumps(settings))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return settings
