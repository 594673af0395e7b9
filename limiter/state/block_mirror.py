"""A local copy of every tenant's enforced blocks, for the failure policy.

While Redis answers, the check script enforces blocks; when a call fails or Redis is down,
the local store decides, and without this copy it would allow a blocked subject.  The
mirror rereads the blocks about once a second: one HKEYS of the tenant registry, one GET of
each tenant's block version (pipelined), and, of the tenants whose version moved, the ids
of their records and the records it has not read before (a flood of blocks adds a few a
second to thousands); every ``full_every`` passes it rereads every record, whatever the
versions, so that a write that did not move a version is seen too.  When Redis does not
answer, the copy stays as it was: its blocks expire locally at their own time.

Nor does it follow a Redis that lost its data.  A Redis restarted empty answers at once,
with no tenants and no blocks, while the control plane's records (blocks included) are put
back from their durable copy (``control.durable.restore``), and the failure policy answers
meanwhile: a copy that followed would allow every blocked subject until then.  So once the
mirror has seen the store's epoch (written once the records are in place), a pass that
finds none leaves the copy as it is, until the epoch is back.

The copy is written into the fallback store (``MemoryStore.block_until``); the check path
never reads it while Redis answers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from limiter.keyspace import Keyspace
from limiter.store.memory import MemoryStore
from stream.cancellation import pause

log = logging.getLogger("ratewatch.limiter")

Subject = tuple[str, str]  # (scope, value)


# what a record says for the copy: the subject and expiry (epoch s) of an enforced block;
# None for a shadow block or an unreadable record
Enforcement = tuple[Subject, float] | None


def enforcement(payload: Any) -> Enforcement:
    try:
        record = json.loads(payload)
        if record.get("mode", "enforce") != "enforce":
            return None
        return (str(record["scope"]), str(record["value"])), float(record["expires_at"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def enforced(
    records: dict[Any, Any], now: float, seen: dict[Any, tuple[Any, Enforcement]] | None = None
) -> dict[Subject, int]:
    """The enforced, unexpired blocks among a tenant's records: subject -> expiry (epoch
    ms), the latest when several blocks name one subject.  Unreadable records are skipped.
    ``seen`` (block id -> record, what it says) spares decoding a record read before, and
    is left holding these records."""
    found: dict[Subject, int] = {}
    decoded: dict[Any, tuple[Any, Enforcement]] = {}
    for block_id, payload in records.items():
        before = seen.get(block_id) if seen is not None else None
        said = before[1] if before is not None and before[0] == payload else enforcement(payload)
        decoded[block_id] = (payload, said)
        if said is None:
            continue
        subject, expires_at = said
        if expires_at > now:
            expires_ms = int(expires_at * 1000)
            if expires_ms > found.get(subject, 0):
                found[subject] = expires_ms
    if seen is not None:
        seen.clear()
        seen.update(decoded)
    return found


class BlockMirror:
    def __init__(
        self,
        redis: Redis,
        keyspace: Keyspace,
        store: MemoryStore,
        interval: float = 1.0,
        full_every: int = 30,
        clock: Callable[[], float] = time.time,
    ):
        self._redis = redis
        self._keyspace = keyspace
        self._store = store
        self._interval = interval
        self._full_every = full_every
        self._clock = clock
        self._versions: dict[str, object] = {}
        self._blocks: dict[str, dict[Subject, int]] = {}
        # per tenant, its records as last read: a flood of blocks rereads them every
        # second, and only the new ones need decoding
        self._records: dict[str, dict[Any, tuple[Any, Enforcement]]] = {}
        self._passes = 0
        self._epoch_seen = False  # the store has one: its loss is a loss of data
        self._holding = False  # the copy is kept through such a loss
        self.refreshed_at: float | None = None  # when the copy was last complete

    @property
    def size(self) -> int:
        """How many subjects the copy blocks."""
        return sum(len(blocks) for blocks in self._blocks.values())

    def status(self) -> dict[str, object]:
        """For ``/health/detailed``: what the copy holds and when it was last complete."""
        return {"subjects": self.size, "refreshed_at": self.refreshed_at}

    async def refresh(self) -> None:
        """One pass; raises ``RedisError`` (the copy unchanged) when Redis does not answer."""
        full = self._passes % self._full_every == 0
        self._passes += 1
        ks = self._keyspace
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(ks.epoch)
            pipe.hkeys(ks.tenants)
            has_epoch, names = await pipe.execute()
        if not has_epoch and self._epoch_seen:
            self._passes -= 1  # this pass read nothing: the next one is still due
            if not self._holding:
                log.warning("Redis lost its data: the copy of blocks stays until it is restored")
            self._holding = True
            return
        self._epoch_seen = self._epoch_seen or bool(has_epoch)
        self._holding = False
        tenants = [name.decode() if isinstance(name, bytes) else name for name in names]
        async with self._redis.pipeline(transaction=False) as pipe:
            for tenant in tenants:
                pipe.get(ks.block_version(tenant))
            versions = await pipe.execute()
        changed = [
            (tenant, version)
            for tenant, version in zip(tenants, versions, strict=True)
            if full or tenant not in self._versions or self._versions[tenant] != version
        ]
        if changed:
            records = await self._read([tenant for tenant, _ in changed], full)
            now = self._clock()
            for (tenant, version), tenant_records in zip(changed, records, strict=True):
                seen = self._records.setdefault(tenant, {})
                self._replace(tenant, enforced(tenant_records, now, seen))
                self._versions[tenant] = version
        for tenant in set(self._blocks) - set(tenants):
            self._replace(tenant, {})
            self._versions.pop(tenant, None)
            self._records.pop(tenant, None)
        self.refreshed_at = self._clock()

    async def _read(self, tenants: list[str], full: bool) -> list[dict[Any, Any]]:
        """Each tenant's records (block id -> record).  On a full pass, and for a tenant
        not read before, all of them (``HGETALL``); otherwise their ids (``HKEYS``) and the
        records of the ids not seen before (``HMGET``): a block's record is written again
        only as it was (a restore, or the enforcement key put back when another block of
        its subject is lifted), and the full passes read everything anyway."""
        ks = self._keyspace
        known = [None if full else self._records.get(tenant) for tenant in tenants]
        async with self._redis.pipeline(transaction=False) as pipe:
            for tenant, seen in zip(tenants, known, strict=True):
                if seen is None:
                    pipe.hgetall(ks.block_records(tenant))
                else:
                    pipe.hkeys(ks.block_records(tenant))
            answers = await pipe.execute()
        records: list[dict[Any, Any]] = []
        missing: list[tuple[int, list[Any]]] = []
        for index, (seen, answer) in enumerate(zip(known, answers, strict=True)):
            if seen is None:
                records.append(answer)
                continue
            records.append({block_id: seen[block_id][0] for block_id in answer if block_id in seen})
            new = [block_id for block_id in answer if block_id not in seen]
            if new:
                missing.append((index, new))
        if missing:
            async with self._redis.pipeline(transaction=False) as pipe:
                for index, ids in missing:
                    pipe.hmget(ks.block_records(tenants[index]), ids)
                payloads = await pipe.execute()
            for (index, ids), found in zip(missing, payloads, strict=True):
                for block_id, payload in zip(ids, found, strict=True):
                    if payload is not None:  # removed since its id was read
                        records[index][block_id] = payload
        return records

    def _replace(self, tenant: str, blocks: dict[Subject, int]) -> None:
        store = self._store
        old = self._blocks.get(tenant, {})
        for scope, value in old.keys() - blocks.keys():
            store.unblock(tenant, scope, value)
        for (scope, value), expires_ms in blocks.items():
            if old.get((scope, value)) != expires_ms:
                store.block_until(tenant, scope, value, expires_ms)
        if blocks:
            self._blocks[tenant] = blocks
        else:
            self._blocks.pop(tenant, None)

    async def run(self) -> None:
        """Refresh every ``interval`` seconds for the life of the process."""
        failing = False
        while True:
            try:
                await self.refresh()
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("blocks not refreshed, the local copy stays: %r", exc)
                failing = True
            await pause(self._interval)
