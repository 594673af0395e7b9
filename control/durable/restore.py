"""Noticing that Redis lost its data, and putting the control-plane records back.

Redis holds an epoch key (``Keyspace.epoch``) from the moment its records are in place.
Redis restarted without persistence, failed over to an empty replica or flushed has no
epoch: ``watch`` looks for it every ``interval`` seconds (one EXISTS) and, when it is gone,
writes every live record of the journal back into Redis, then the epoch.  Counters restart
from zero; nothing else is lost.

A restore is idempotent: it writes each record as it is in the journal, so several limiter
instances that notice the loss at once write the same things.  A change made meanwhile on
another instance is in the journal before it is in Redis (a deletion) or before its API
answer (the rest), so after writing everything the restorer reads the journal again and
applies what changed, until nothing has: a key revoked during a restore stays revoked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from control.durable.journal import (
    ALLOW,
    BLOCK,
    KEY,
    KINDS,
    OVERRIDE,
    POLICY,
    TENANT,
    WEBHOOK,
    Entry,
    Journal,
)
from control.durable.records import (
    allow_entry,
    allow_of,
    block_entry,
    block_of,
    key_entry,
    key_of,
    override_entry,
    override_record,
    policy_entry,
    policy_record,
    settings_of,
    tenant_entry,
    webhook_entry,
)
from limiter.errors import ConfigError, NotFound, StoreUnavailable
from limiter.keyspace import Keyspace
from limiter.policies.store import PolicyStore
from limiter.state.allowlist import Allowlist
from limiter.state.apikeys import KeyStore
from limiter.state.blocks import BlockStore
from limiter.state.tenants import TenantSettingsStore
from stream.cancellation import pause
from webhooks.registry import WebhookStore
from webhooks.sealing import SecretSealer

log = logging.getLogger("ratewatch.durable")

MAX_CATCH_UPS = 10
# how long a control-plane change waits for a restore in progress before it is refused
SETTLE_TIMEOUT = 10.0


class Restorer:
    def __init__(
        self,
        redis: Redis,
        keyspace: Keyspace,
        journal: Journal,
        sealer: SecretSealer,
        *,
        keys: KeyStore,
        tenant_settings: TenantSettingsStore,
        blocks: BlockStore,
        allowlist: Allowlist,
        webhooks: WebhookStore,
        interval: float = 0.5,
        policies: PolicyStore | None = None,
    ):
        self._redis = redis
        self._keyspace = keyspace
        self._journal = journal
        self._sealer = sealer
        self._keys = keys
        self._tenant_settings = tenant_settings
        self._blocks = blocks
        self._allowlist = allowlist
        self._webhooks = webhooks
        self._policies = policies or PolicyStore(redis, keyspace)
        self._interval = interval
        self._restored = asyncio.Event()
        self._restored.set()
        self._backfilled = False
        self.restores = 0  # how many restores this process made

    @property
    def restoring(self) -> bool:
        return not self._restored.is_set()

    async def start(self) -> None:
        """At start: copy Redis's records into an empty journal (a first start, or a new
        durable store), or restore them into a Redis that lost them.  A durable store that
        does not answer does not stop the limiter: ``watch`` tries again."""
        try:
            await self._backfill_if_empty()
            if not await self._has_epoch():
                await self._restore_once()
        except StoreUnavailable as exc:
            log.error("control-plane records not checked at start, retrying: %s", exc)

    async def _backfill_if_empty(self) -> None:
        if self._backfilled:
            return
        if await self._journal.count() == 0:
            copied = await self.backfill()
            if copied:
                log.warning("copied %d control-plane records into the %s", copied,
                            self._journal.description)  # fmt: skip
        self._backfilled = True

    async def lost(self) -> bool:
        """Whether Redis lost its data and is not restored yet (False if it cannot tell)."""
        if self.restoring:
            return True
        try:
            return not await self._has_epoch()
        except StoreUnavailable:
            return False

    async def settled(self) -> None:
        """Return once no restore is under way (one is started if Redis lost its epoch);
        StoreUnavailable if none finishes within SETTLE_TIMEOUT."""
        if not self.restoring and await self._has_epoch():
            return
        if not self.restoring:
            await self._restore_once()
            return
        try:
            await asyncio.wait_for(self._restored.wait(), SETTLE_TIMEOUT)
        except TimeoutError:
            raise StoreUnavailable("Redis lost its data and is still being restored") from None

    async def watch(self) -> None:
        """Restore whenever the epoch is gone, until cancelled."""
        while True:
            await pause(self._interval)
            try:
                await self._backfill_if_empty()
                if not self.restoring and not await self._has_epoch():
                    await self._restore_once()
            except StoreUnavailable as exc:
                log.warning("control-plane records not restored yet: %s", exc)

    async def _restore_once(self) -> None:
        if self.restoring:
            await self._restored.wait()
            return
        self._restored.clear()
        try:
            await self.restore()
        finally:
            self._restored.set()

    async def restore(self) -> int:
        """Write every record of the journal into Redis, then the epoch; how many records
        were written."""
        started = time.monotonic()
        applied: dict[tuple[str, str, str], int] = {}
        written = 0
        for _ in range(MAX_CATCH_UPS):
            changed = [e for e in await self._journal.entries() if applied.get(e.name) != e.version]
            if not changed:
                break
            rank = {kind: index for index, kind in enumerate(KINDS)}
            for item in sorted(changed, key=lambda e: (rank.get(e.kind, len(KINDS)), e.version)):
                await self._apply(item)
                applied[item.name] = item.version
                written += 1
        await self._keys.verify_secret()
        await self._set_epoch()
        self.restores += 1
        if written:
            log.warning(
                "Redis had lost its data: %d control-plane records restored from the %s in %.2fs",
                written, self._journal.description, time.monotonic() - started,
            )  # fmt: skip
        else:  # a new store: nothing was lost, there was nothing yet
            log.info("control-plane epoch set on an empty store (nothing to restore)")
        return written

    async def _apply(self, item: Entry) -> None:
        try:
            if item.kind == TENANT and not item.deleted:
                await self._tenant_settings.restore(item.tenant, settings_of(item))
            elif item.kind == KEY:
                record = key_of(item)
                await (self._keys.drop(record) if item.deleted else self._keys.restore(record))
            elif item.kind == BLOCK:
                block = block_of(item)
                if item.deleted:
                    with contextlib.suppress(NotFound):
                        await self._blocks.remove(item.tenant, block.id)
                else:
                    await self._blocks.restore(item.tenant, block)
            elif item.kind == ALLOW:
                allowed = allow_of(item)
                if item.deleted:
                    with contextlib.suppress(NotFound):
                        await self._allowlist.remove(item.tenant, allowed.scope, allowed.value)
                else:
                    await self._allowlist.restore(item.tenant, allowed)
            elif item.kind == WEBHOOK:
                if item.deleted:
                    with contextlib.suppress(NotFound):
                        await self._webhooks.delete(item.tenant, item.id)
                else:
                    await self._webhooks.restore(item.tenant, item.id, item.payload)
            elif item.kind == POLICY:
                policy = policy_record(item)
                if item.deleted:
                    with contextlib.suppress(NotFound):
                        await self._policies.delete_policy(item.tenant, policy.name)
                else:
                    await self._policies.restore_policy(item.tenant, policy)
            elif item.kind == OVERRIDE:
                override = override_record(item)
                if item.deleted:
                    with contextlib.suppress(NotFound):
                        await self._policies.delete_override(
                            item.tenant, override.policy, override.identifier
                        )
                else:
                    await self._policies.restore_override(item.tenant, override)
        except (ConfigError, ValueError, TypeError, KeyError) as exc:
            # one unreadable record must not keep every other one out of Redis
            log.error("control-plane record %s/%s/%s not restored: %s",
                      item.kind, item.tenant, item.id, exc)  # fmt: skip

    async def backfill(self) -> int:
        """Copy every record Redis holds into the journal; how many."""
        entries: list[Entry] = []
        for tenant in await self._keys.tenants():
            entries.append(tenant_entry(tenant, await self._tenant_settings.get(tenant)))
            entries += [key_entry(record) for record in await self._keys.list_keys(tenant)]
            entries += [
                block_entry(tenant, block)
                for block in await self._blocks.active(tenant)
                if block.source == "manual"
            ]
            entries += [allow_entry(tenant, e) for e in await self._allowlist.entries(tenant)]
            entries += [
                webhook_entry(hook, self._sealer) for hook in await self._webhooks.webhooks(tenant)
            ]
        for tenant in await self._policies.tenants():
            for policy in await self._policies.policies(tenant):
                entries.append(policy_entry(tenant, policy))
                entries += [
                    override_entry(tenant, o)
                    for o in await self._policies.overrides(tenant, policy.name)
                ]
        if entries:
            await self._journal.put(entries)
        return len(entries)

    async def _has_epoch(self) -> bool:
        try:
            return bool(await self._redis.exists(self._keyspace.epoch))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc

    async def _set_epoch(self) -> None:
        try:
            await self._redis.set(self._keyspace.epoch, f"{time.time():.3f}:{secrets.token_hex(8)}")
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
