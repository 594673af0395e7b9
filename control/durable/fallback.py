"""The authenticator's way to the durable copy (``limiter.auth.KeyFallback``): asked only
for a key Redis does not know while Redis is known to have lost its data, or for a key not
cached while Redis is unreachable."""

from __future__ import annotations

from control.durable.journal import KEY, TENANT, Journal
from control.durable.records import key_of, settings_of
from control.durable.restore import Restorer
from limiter.state.apikeys import KeyRecord
from limiter.state.tenants import FailMode


class DurableKeys:
    def __init__(self, journal: Journal, restorer: Restorer):
        self._journal = journal
        self._restorer = restorer

    async def lost(self) -> bool:
        return await self._restorer.lost()

    async def find(self, key_hash: str) -> tuple[KeyRecord, FailMode | None] | None:
        found = await self._journal.find(KEY, key_hash)
        if found is None or found.deleted:
            return None
        record = key_of(found)
        tenant = await self._journal.find(TENANT, record.tenant)
        mode = None
        if tenant is not None and not tenant.deleted:
            value = settings_of(tenant).get("fail_mode")
            mode = FailMode(str(value)) if value else None
        return record, mode
