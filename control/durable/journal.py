"""The journal: the latest version of every control-plane record, kept outside Redis.

A record is named by ``(kind, tenant, id)`` and carries a version (nanoseconds since the
epoch when it was written) and its JSON payload, or a deletion mark: a revoked key or a
lifted block is kept as a tombstone, so that restoring Redis never brings it back.  Writing
an older version than the one stored changes nothing.

Two stores implement it: a SQLite file in the data dir (``sqlite_journal.py``, one machine)
and a ClickHouse table (``clickhouse_journal.py``, the distributed deployment).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# the kinds of record, and what ``id`` is for each
KEY = "key"  # an API key: id = its keyed BLAKE3 hash (never the key)
TENANT = "tenant"  # a tenant's registry record and settings: id = the tenant's name
BLOCK = "block"  # a manual block: id = the block's id
ALLOW = "allow"  # an allowlist entry: id = "<scope>:<value>"
WEBHOOK = "webhook"  # a webhook: id = the webhook's id (secrets sealed, ``webhooks/sealing.py``)
POLICY = "policy"  # a named policy: id = its name
OVERRIDE = "override"  # a policy's override: id = "<policy>/<identifier>"
# the order a restore writes them in
KINDS = (TENANT, KEY, BLOCK, ALLOW, WEBHOOK, POLICY, OVERRIDE)


@dataclass(frozen=True, slots=True)
class Entry:
    kind: str
    tenant: str
    id: str
    version: int
    deleted: bool
    payload: str  # JSON; for a deletion, the record as it was (what to take out of Redis)

    @property
    def name(self) -> tuple[str, str, str]:
        return (self.kind, self.tenant, self.id)


def entry(kind: str, tenant: str, record_id: str, payload: str, *, deleted: bool = False) -> Entry:
    """A new version of a record, or its deletion, versioned now."""
    return Entry(kind, tenant, record_id, time.time_ns(), deleted, payload)


class Journal(Protocol):
    """Every method raises ``limiter.errors.StoreUnavailable`` when the store does not
    answer."""

    description: str  # where the records are, for logs and health output; no password

    async def put(self, entries: Sequence[Entry]) -> None:
        """Store ``entries``, durably, before returning."""
        ...

    async def entries(self) -> list[Entry]:
        """The latest version of every record, deletions included."""
        ...

    async def find(self, kind: str, record_id: str) -> Entry | None:
        """The latest version of the record of ``kind`` with ``record_id`` (whatever its
        tenant), deletions included; None if there is none."""
        ...

    async def count(self) -> int:
        """How many records (deletions included) are kept."""
        ...

    async def close(self) -> None: ...
