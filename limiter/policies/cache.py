"""Every tenant's policies and overrides, held in each limiter process.

A check by policy reads this copy and nothing else: no round trip is added to the check
path.  ``run`` rereads the copy every ``interval`` seconds, so a change made through any
instance is in force on every instance within about that (the default half a second keeps
it within the promised second): one GET of the global policy version per pass and, when it
moved, one GET per tenant with policies and the records of the tenants whose version moved.
Every ``full_every`` passes every tenant is reread whatever the versions say.

A policy the copy does not know is looked up in Redis at once (its tenant reread at most
every ``MISS_RELOAD_INTERVAL``), so a policy created a moment ago on another instance
already works here.  While
Redis does not answer, or while it is being restored after losing its data, the copy stays
as it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from limiter.errors import NotFound, StoreUnavailable
from limiter.keyspace import Keyspace
from limiter.policies.model import Overrides, Policy, Resolved, resolve
from limiter.policies.store import PolicyStore, TenantPolicies
from stream.cancellation import pause

log = logging.getLogger("ratewatch.limiter")

DEFAULT_REFRESH_INTERVAL = 0.5
# a check naming a policy the copy lacks rereads its tenant at most this often: a policy
# made a moment ago elsewhere works at once, a flood of unknown names costs little
MISS_RELOAD_INTERVAL = 0.05


class UnknownPolicy(NotFound):
    """A check named a policy its tenant does not have."""


class PolicyCache:
    def __init__(
        self,
        redis: Redis,
        keyspace: Keyspace,
        interval: float = DEFAULT_REFRESH_INTERVAL,
        full_every: int = 60,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._redis = redis
        self._keyspace = keyspace
        self.store = PolicyStore(redis, keyspace)
        self._interval = interval
        self._full_every = full_every
        self._clock = clock
        self._tenants: dict[str, TenantPolicies] = {}
        self._loaded_at: dict[str, float] = {}
        self._versions: dict[str, object] = {}
        self._global: object = None
        self._passes = 0
        self._loads: dict[str, asyncio.Future[TenantPolicies]] = {}
        self.refreshed_at: float | None = None  # epoch seconds of the last complete pass

    def status(self) -> dict[str, object]:
        return {
            "tenants": len(self._tenants),
            "policies": sum(len(p) for p in self._tenants.values()),
            "refreshed_at": self.refreshed_at,
        }

    def cached(self, tenant: str, name: str) -> tuple[Policy, Overrides] | None:
        """The policy ``name`` of ``tenant`` if the copy holds it (no I/O)."""
        policies = self._tenants.get(tenant)
        return None if policies is None else policies.get(name)

    async def get(self, tenant: str, name: str) -> tuple[Policy, Overrides]:
        """The policy ``name`` of ``tenant`` and its overrides; UnknownPolicy if it has none
        of that name; StoreUnavailable only if Redis is down and the copy never held it."""
        found = self.cached(tenant, name)
        if found is not None:
            return found
        loaded = self._loaded_at.get(tenant)
        if loaded is None or self._clock() - loaded >= MISS_RELOAD_INTERVAL:
            try:
                policies = await self._load(tenant)
            except StoreUnavailable:
                if tenant not in self._tenants:
                    raise
                policies = self._tenants[tenant]
            found = policies.get(name)
            if found is not None:
                return found
        raise UnknownPolicy(f"there is no policy {name[:80]!r}")

    async def resolve(self, tenant: str, name: str, identifier: str) -> Resolved:
        """What applies to ``identifier`` under ``tenant``'s policy ``name``
        (``limiter.policies.model.resolve``); UnknownPolicy if there is no such policy."""
        found = self.cached(tenant, name)
        policy, overrides = found if found is not None else await self.get(tenant, name)
        return resolve(policy, overrides, identifier)

    async def reload(self, tenant: str) -> None:
        """Read ``tenant``'s policies again now (after a change made by this process)."""
        self._loaded_at.pop(tenant, None)
        await self._load(tenant)

    async def _load(self, tenant: str) -> TenantPolicies:
        # one load of a tenant at a time: concurrent misses share it
        pending = self._loads.get(tenant)
        if pending is None:
            pending = asyncio.ensure_future(self._read(tenant))
            self._loads[tenant] = pending
            pending.add_done_callback(lambda _: self._loads.pop(tenant, None))
        return await asyncio.shield(pending)

    async def _read(self, tenant: str) -> TenantPolicies:
        try:
            version = await self._redis.get(self._keyspace.policy_version(tenant))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        policies = await self.store.load(tenant)
        self._keep(tenant, policies, version)
        return policies

    def _keep(self, tenant: str, policies: TenantPolicies, version: object) -> None:
        if policies:
            self._tenants[tenant] = policies
        else:
            self._tenants.pop(tenant, None)
        self._versions[tenant] = version
        self._loaded_at[tenant] = self._clock()

    async def refresh(self) -> None:
        """One pass; raises StoreUnavailable (the copy unchanged) if Redis does not answer."""
        full = self._passes % self._full_every == 0
        self._passes += 1
        ks = self._keyspace
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(ks.policies_version)
                pipe.exists(ks.epoch)
                version, epoch = await pipe.execute()
            if (version is None or not epoch) and self._global is not None:
                # Redis lost its data (the version is never deleted) or is being restored
                # (``control/durable/restore.py`` writes the epoch once every record is
                # back): the copy stays whole until then, rather than follow a partial one
                self.refreshed_at = time.time()
                return
            if version == self._global and not full:
                self.refreshed_at = time.time()
                return
            tenants = await self.store.tenants()
            async with self._redis.pipeline(transaction=False) as pipe:
                for tenant in tenants:
                    pipe.get(ks.policy_version(tenant))
                versions = await pipe.execute() if tenants else []
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        for tenant, tenant_version in zip(tenants, versions, strict=True):
            if full or tenant not in self._versions or self._versions[tenant] != tenant_version:
                self._keep(tenant, await self.store.load(tenant), tenant_version)
        for tenant in set(self._tenants) - set(tenants):
            self._tenants.pop(tenant, None)
        self._global = version
        self.refreshed_at = time.time()

    async def run(self) -> None:
        """Refresh every ``interval`` seconds for the life of the process."""
        failing = False
        while True:
            try:
                await self.refresh()
                failing = False
            except (StoreUnavailable, OSError) as exc:
                if not failing:
                    log.warning("policies not refreshed, the local copy stays: %s", exc)
                failing = True
            await pause(self._interval)
