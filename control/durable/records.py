"""What the control plane writes to the journal, and how a journal entry reads back.

``DurableRecords`` is what the control routes (and ``ratewatch keys``) call after a change
is in Redis and before they answer: a change the API confirmed is in the durable store.
A deletion is journaled *before* Redis is changed, so that a revoked key or a lifted block
can never be restored, even if the Redis step then fails.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict

from control.durable.journal import (
    ALLOW,
    BLOCK,
    KEY,
    OVERRIDE,
    POLICY,
    TENANT,
    WEBHOOK,
    Entry,
    Journal,
    entry,
)
from limiter.policies.model import Override, Policy, override_of, policy_of
from limiter.state.allowlist import AllowEntry
from limiter.state.apikeys import KeyRecord
from limiter.state.blocks import Block
from limiter.state.tenants import TenantSettingsStore
from webhooks.registry import Webhook, from_record, sealed_record
from webhooks.sealing import SecretSealer


async def _always_settled() -> None:
    return None


class DurableRecords:
    """``settled``: awaited before a change is made in Redis; it waits while Redis is being
    restored (a change made to an emptied Redis would be journaled without what it lost)."""

    def __init__(
        self,
        journal: Journal,
        sealer: SecretSealer,
        tenant_settings: TenantSettingsStore,
        settled: Callable[[], Awaitable[None]] = _always_settled,
    ):
        self.journal = journal
        self._sealer = sealer
        self._tenant_settings = tenant_settings
        self._settled = settled

    async def settled(self) -> None:
        await self._settled()

    async def key_saved(self, record: KeyRecord) -> None:
        """A new key, with its tenant's record (created with the tenant's first key)."""
        settings = await self._tenant_settings.get(record.tenant)
        await self.journal.put([tenant_entry(record.tenant, settings), key_entry(record)])

    async def key_revoked(self, record: KeyRecord) -> None:
        await self.journal.put([key_entry(record, deleted=True)])

    async def settings_saved(self, tenant: str, settings: Mapping[str, object]) -> None:
        await self.journal.put([tenant_entry(tenant, settings)])

    async def block_saved(self, tenant: str, block: Block) -> None:
        await self.journal.put([block_entry(tenant, block)])

    async def block_removed(self, tenant: str, block: Block) -> None:
        await self.journal.put([block_entry(tenant, block, deleted=True)])

    async def allow_saved(self, tenant: str, allowed: AllowEntry) -> None:
        await self.journal.put([allow_entry(tenant, allowed)])

    async def allow_removed(self, tenant: str, allowed: AllowEntry) -> None:
        await self.journal.put([allow_entry(tenant, allowed, deleted=True)])

    async def policy_saved(self, tenant: str, policy: Policy) -> None:
        await self.journal.put([policy_entry(tenant, policy)])

    async def policy_deleted(self, tenant: str, policy: Policy, overrides: list[Override]) -> None:
        """The policy and its overrides, as deletion marks (journaled before Redis)."""
        await self.journal.put(
            [
                policy_entry(tenant, policy, deleted=True),
                *(override_entry(tenant, o, deleted=True) for o in overrides),
            ]
        )

    async def override_saved(self, tenant: str, override: Override) -> None:
        await self.journal.put([override_entry(tenant, override)])

    async def override_deleted(self, tenant: str, override: Override) -> None:
        await self.journal.put([override_entry(tenant, override, deleted=True)])

    async def webhook_saved(self, hook: Webhook) -> None:
        await self.journal.put([webhook_entry(hook, self._sealer)])

    async def webhook_deleted(self, hook: Webhook) -> None:
        await self.journal.put([webhook_entry(hook, self._sealer, deleted=True)])


def tenant_entry(tenant: str, settings: Mapping[str, object]) -> Entry:
    return entry(TENANT, tenant, tenant, json.dumps(dict(settings)))


def key_entry(record: KeyRecord, *, deleted: bool = False) -> Entry:
    # the record holds the key's keyed hash and never the key
    return entry(KEY, record.tenant, record.hash, json.dumps(asdict(record)), deleted=deleted)


def block_entry(tenant: str, block: Block, *, deleted: bool = False) -> Entry:
    return entry(BLOCK, tenant, block.id, json.dumps(block.public()), deleted=deleted)


def allow_entry(tenant: str, allowed: AllowEntry, *, deleted: bool = False) -> Entry:
    payload = json.dumps(asdict(allowed))
    return entry(ALLOW, tenant, f"{allowed.scope}:{allowed.value}", payload, deleted=deleted)


def policy_entry(tenant: str, policy: Policy, *, deleted: bool = False) -> Entry:
    return entry(POLICY, tenant, policy.name, json.dumps(policy.public()), deleted=deleted)


def override_entry(tenant: str, override: Override, *, deleted: bool = False) -> Entry:
    record_id = f"{override.policy}/{override.identifier}"  # no policy name holds a '/'
    return entry(OVERRIDE, tenant, record_id, json.dumps(override.public()), deleted=deleted)


def webhook_entry(hook: Webhook, sealer: SecretSealer, *, deleted: bool = False) -> Entry:
    """The webhook as Redis stores it: its signing secrets sealed (``webhooks/sealing.py``)."""
    record = sealed_record(hook, sealer)
    return entry(WEBHOOK, hook.tenant, hook.id, json.dumps(record), deleted=deleted)


def key_of(item: Entry) -> KeyRecord:
    return KeyRecord(**json.loads(item.payload))


def settings_of(item: Entry) -> dict[str, object]:
    settings: dict[str, object] = json.loads(item.payload)
    return settings


def block_of(item: Entry) -> Block:
    return Block(**json.loads(item.payload))


def allow_of(item: Entry) -> AllowEntry:
    return AllowEntry(**json.loads(item.payload))


def policy_record(item: Entry) -> Policy:
    return policy_of(json.loads(item.payload))


def override_record(item: Entry) -> Override:
    return override_of(json.loads(item.payload))


def webhook_of(item: Entry, sealer: SecretSealer) -> Webhook:
    """The webhook with its secrets opened; ConfigError if they do not open."""
    return from_record(item.tenant, item.payload, sealer)
