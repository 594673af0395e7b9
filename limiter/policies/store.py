"""Policies and their overrides in Redis.

Storage (``limiter.keyspace``): one hash of the tenant's policies (name -> JSON), one hash
of overrides per policy (identifier -> JSON), the tenant's policy version and a global one,
both set to a new unique value by every write: a limiter's cache
(``limiter/policies/cache.py``) tells whether anything changed with one GET, and which
tenants with one more per tenant.  Unique values rather than counters: a Redis that lost
its data and had the policies written back would count from zero again, and could reach
the very number a cache holds for other contents.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from limiter.errors import InvalidInput, NotFound, StoreUnavailable
from limiter.keyspace import Keyspace
from limiter.policies.model import (
    MAX_OVERRIDES,
    Override,
    Overrides,
    Policy,
    Rule,
    check_identifier,
    check_name,
    override_of,
    policy_of,
)

TenantPolicies = dict[str, tuple[Policy, Overrides]]


def new_version() -> str:
    """A version no other write has: the time and a random part."""
    return f"{time.time_ns()}-{secrets.token_hex(4)}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class PolicyStore:
    def __init__(self, redis: Redis, keyspace: Keyspace):
        self._redis = redis
        self._keyspace = keyspace

    async def put_policy(self, tenant: str, name: str, rule: Rule) -> tuple[Policy, bool]:
        """Create or replace the policy ``name``; the policy and whether it is new."""
        policy = Policy(check_name(name), rule, round(time.time(), 3))
        created = await self._write(tenant, self._keyspace.policies(tenant), name, policy.public())
        return policy, created

    async def put_override(
        self, tenant: str, name: str, identifier: str, rule: Rule
    ) -> tuple[Override, bool]:
        """Create or replace an override of the policy ``name``; NotFound without the policy."""
        check_identifier(identifier)
        await self.policy(tenant, name)
        key = self._keyspace.policy_overrides(tenant, name)
        try:
            count = await self._redis.hlen(key)
            exists = await self._redis.hexists(key, identifier)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        if count >= MAX_OVERRIDES and not exists:
            raise InvalidInput(f"policy {name!r} has {MAX_OVERRIDES} overrides, the most allowed")
        override = Override(name, identifier, rule, round(time.time(), 3))
        return override, await self._write(tenant, key, identifier, override.public())

    async def restore_policy(self, tenant: str, policy: Policy) -> None:
        await self._write(tenant, self._keyspace.policies(tenant), policy.name, policy.public())

    async def restore_override(self, tenant: str, override: Override) -> None:
        key = self._keyspace.policy_overrides(tenant, override.policy)
        await self._write(tenant, key, override.identifier, override.public())

    async def _write(self, tenant: str, key: str, field: str, record: dict[str, Any]) -> bool:
        ks = self._keyspace
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, field, json.dumps(record))
                pipe.set(ks.policy_version(tenant), new_version())
                added, _ = await pipe.execute()
            await self._announce(tenant)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return bool(added)

    async def _announce(self, tenant: str) -> None:
        # outside the tenant's transaction: on Redis Cluster these keys are in other slots
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(self._keyspace.policy_tenants, tenant)
            pipe.set(self._keyspace.policies_version, new_version())
            await pipe.execute()

    async def policy(self, tenant: str, name: str) -> Policy:
        """The policy ``name``; NotFound if the tenant has none of that name."""
        try:
            raw = await self._redis.hget(self._keyspace.policies(tenant), name)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        if raw is None:
            raise NotFound(f"there is no policy {name[:80]!r}")
        return policy_of(json.loads(raw))

    async def policies(self, tenant: str) -> list[Policy]:
        try:
            raw = await self._redis.hgetall(self._keyspace.policies(tenant))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return sorted((policy_of(json.loads(v)) for v in raw.values()), key=lambda p: p.name)

    async def overrides(self, tenant: str, name: str) -> list[Override]:
        try:
            raw = await self._redis.hgetall(self._keyspace.policy_overrides(tenant, name))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return sorted((override_of(json.loads(v)) for v in raw.values()),
                      key=lambda o: o.identifier)  # fmt: skip

    async def override(self, tenant: str, name: str, identifier: str) -> Override:
        try:
            raw = await self._redis.hget(self._keyspace.policy_overrides(tenant, name), identifier)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        if raw is None:
            raise NotFound(f"policy {name[:80]!r} has no override {identifier[:80]!r}")
        return override_of(json.loads(raw))

    async def delete_policy(self, tenant: str, name: str) -> None:
        """Delete the policy and its overrides; NotFound if there is no such policy."""
        ks = self._keyspace
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(ks.policies(tenant), name)
                pipe.delete(ks.policy_overrides(tenant, name))
                pipe.set(ks.policy_version(tenant), new_version())
                removed, _, _ = await pipe.execute()
            await self._announce(tenant)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        if not removed:
            raise NotFound(f"there is no policy {name[:80]!r}")

    async def delete_override(self, tenant: str, name: str, identifier: str) -> None:
        ks = self._keyspace
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(ks.policy_overrides(tenant, name), identifier)
                pipe.set(ks.policy_version(tenant), new_version())
                removed, _ = await pipe.execute()
            await self._announce(tenant)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        if not removed:
            raise NotFound(f"policy {name[:80]!r} has no override {identifier[:80]!r}")

    async def tenants(self) -> list[str]:
        """The tenants that have (or had) policies."""
        try:
            return sorted(
                _text(t) for t in await self._redis.smembers(self._keyspace.policy_tenants)
            )
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc

    async def load(self, tenant: str) -> TenantPolicies:
        """Every policy of ``tenant`` with its overrides: two round trips."""
        ks = self._keyspace
        try:
            raw = await self._redis.hgetall(ks.policies(tenant))
            policies = [policy_of(json.loads(v)) for v in raw.values()]
            async with self._redis.pipeline(transaction=False) as pipe:
                for policy in policies:
                    pipe.hgetall(ks.policy_overrides(tenant, policy.name))
                found = await pipe.execute() if policies else []
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return {
            policy.name: (policy, Overrides([override_of(json.loads(v)) for v in raw.values()]))
            for policy, raw in zip(policies, found, strict=True)
        }
