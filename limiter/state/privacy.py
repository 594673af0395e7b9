"""What the limiter's Redis holds about one user, and erasing it.

A user's data (the product's definition, the same in the analytics store, see
``analytics/erasure.py``): within one tenant, the counters of every limiter key equal to
the user id or starting with ``<user id>:`` (``user:123`` owns ``user:123`` and
``user:123:search``), every block whose subject is that user id (scope ``user_id``) or one
of those keys (scope ``key``), and the detectors' records about those subjects (offence
history, lifted-block markers, action claims).  Counters of keys shared by many users (a check of
``api:search`` that carries ``user_id``) hold no trace of who used them and are kept.

Counters and records are found with one SCAN: a tenant's keys share one hash tag, and a
privacy request is rare enough that walking the keyspace once is the right price for
keeping no per-user index on the hot path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from limiter.errors import NotFound, StoreUnavailable
from limiter.keyspace import Keyspace
from limiter.state.blocks import Block, BlockStore

_SCAN_COUNT = 1000
_DETECTION_RECORDS = ("off", "lifted", "claim")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def owns_key(user_id: str, key: str) -> bool:
    """Whether the limiter key ``key`` is ``user_id``'s."""
    return key == user_id or key.startswith(user_id + ":")


@dataclass(frozen=True)
class RedisUserData:
    counters: dict[str, str]  # Redis name of each of the user's counters -> its limiter key
    blocks: list[Block]
    detection_records: list[str]  # Redis names of the detectors' records about the user

    @property
    def limiter_keys(self) -> set[str]:
        return set(self.counters.values())


class UserDataStore:
    """Finds and erases one user's counters and blocks in a tenant."""

    def __init__(self, redis: Redis, keyspace: Keyspace, blocks: BlockStore):
        self._redis = redis
        self._keyspace = keyspace
        self._blocks = blocks

    async def find(self, tenant: str, user_id: str) -> RedisUserData:
        counters, records = await self._scan(tenant, user_id)
        blocks = [
            block
            for block in await self._blocks.active(tenant)
            if (block.scope == "user_id" and block.value == user_id)
            or (block.scope == "key" and owns_key(user_id, block.value))
        ]
        return RedisUserData(counters, blocks, records)

    async def erase(self, tenant: str, user_id: str) -> tuple[int, int, int]:
        """Delete the user's counters, blocks and detection records; return how many of
        each went."""
        found = await self.find(tenant, user_id)
        removed = 0
        for block in found.blocks:
            try:
                await self._blocks.remove(tenant, block.id)
                removed += 1
            except NotFound:  # expired or lifted meanwhile
                pass
        names = sorted(found.counters)
        deleted = 0
        try:
            for start in range(0, len(names), 500):
                deleted += await self._redis.delete(*names[start : start + 500])
            records = found.detection_records
            erased_records = await self._redis.delete(*records) if records else 0
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return deleted, removed, erased_records

    async def _scan(self, tenant: str, user_id: str) -> tuple[dict[str, str], list[str]]:
        """The user's counters (name -> limiter key) and detection records, from one walk
        of the keyspace.  The glob only narrows it; the checks below make it exact (a key
        may itself contain the user id without being the user's)."""
        tag = self._keyspace.tenant_tag(tenant)
        counter_base = f"{tag}:c:"  # <tag>:c:<algorithm>:<window_ms>:<key>
        record_bases = [f"{tag}:{kind}:" for kind in _DETECTION_RECORDS]  # ...:<scope>:<subject>
        escaped = _GLOB_SPECIAL.sub(r"\\\1", user_id)
        pattern = f"{tag}:*{escaped}*"
        counters: dict[str, str] = {}
        records: list[str] = []
        try:
            async for raw in self._redis.scan_iter(match=pattern, count=_SCAN_COUNT):
                name = raw.decode() if isinstance(raw, bytes) else raw
                if name.startswith(counter_base):
                    rest = name[len(counter_base) :].split(":", 2)
                    if len(rest) == 3 and rest[1].isdigit() and owns_key(user_id, rest[2]):
                        counters[name] = rest[2]
                    continue
                for base in record_bases:
                    if name.startswith(base):
                        scope, _, subject = name[len(base) :].partition(":")
                        if (scope == "user_id" and subject == user_id) or (
                            scope == "key" and owns_key(user_id, subject)
                        ):
                            records.append(name)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return counters, sorted(records)
