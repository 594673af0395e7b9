"""Blocks: manual ones from the API, dynamic ones from the detectors.

Storage format (shared by every writer; the detectors write blocks through this class):

- ``<tenant tag>:blocks`` — a hash, block id -> JSON record with the fields of ``Block``
  (``id``, ``scope``, ``value``, ``reason``, ``detector``, ``score``, ``created_at`` and
  ``expires_at`` in epoch seconds, ``mode`` ``enforce`` | ``shadow``, ``source``
  ``manual`` | ``detector``, ``explanation`` an object or null, ``incident_id`` the
  incident of a coordinated campaign's member, else null).
- ``<tenant tag>:bk:<scope>:<value>`` — the enforcement key: a string holding the id of the
  block that enforces it, with a PX expiry equal to the block's time left.  The check
  script denies a check when the key of any of its subjects exists (``reason: blocked``,
  ``retry_after`` = its PTTL).  Shadow blocks have a record and no enforcement key.
- ``<tenant tag>:blocks:v`` — the tenant's block version, incremented by every write of
  the two above, so that the limiter's local copy of blocks (``block_mirror``) rereads a
  tenant's records only when they changed.
- ``<tenant tag>:lifted:<scope>:<value>`` — set for ``LIFT_SUPPRESSION_SECONDS`` when a
  detector's block is lifted by hand: the detectors do not impose it again meanwhile, so
  the evidence that led to it (still in their windows) cannot undo the operator's call.

Records of expired blocks are pruned when blocks are listed.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from limiter.errors import InvalidInput, NotFound, StoreUnavailable
from limiter.keyspace import BLOCK_SCOPES, Keyspace
from limiter.scripts import register_script
from limiter.state.block_record import Block
from limiter.state.block_snapshots import BlockSnapshots, block_version

__all__ = ["Block", "BlockStore", "normalize_ip", "normalize_subject"]

MAX_BLOCK_SECONDS = 366 * 24 * 3600
MAX_REASON_LENGTH = 500
MAX_VALUE_LENGTH = 1024
MODES = ("enforce", "shadow")
# the detectors' longest window: after it, all their evidence is from after the lift
LIFT_SUPPRESSION_SECONDS = 600


def normalize_ip(value: str) -> str:
    """The canonical text of an IP address, so that every spelling matches one block."""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        raise InvalidInput(f"{value[:100]!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def normalize_subject(scope: str, value: str) -> str:
    if scope not in BLOCK_SCOPES:
        raise InvalidInput(f"block scope {scope!r} is not one of {', '.join(BLOCK_SCOPES)}")
    if not value or len(value) > MAX_VALUE_LENGTH:
        raise InvalidInput(f"block value must be 1-{MAX_VALUE_LENGTH} characters")
    return normalize_ip(value) if scope == "ip" else value


class BlockStore:
    def __init__(self, redis: Redis, keyspace: Keyspace, snapshots: BlockSnapshots | None = None):
        self._redis = redis
        self._keyspace = keyspace
        self._snapshots = snapshots if snapshots is not None else BlockSnapshots()
        self._put = register_script(redis, "limiter", "block_put.lua")
        self._remove = register_script(redis, "limiter", "block_remove.lua")

    async def create(
        self,
        tenant: str,
        scope: str,
        value: str,
        ttl_seconds: float,
        reason: str,
        *,
        mode: str = "enforce",
        source: str = "manual",
        detector: str | None = None,
        score: float | None = None,
        explanation: dict[str, Any] | None = None,
        incident_id: str | None = None,
    ) -> Block:
        value = normalize_subject(scope, value)
        if not 0 < ttl_seconds <= MAX_BLOCK_SECONDS:
            raise InvalidInput(
                f"block ttl {ttl_seconds!r} is out of range: 0 < ttl <= {MAX_BLOCK_SECONDS}"
            )
        if mode not in MODES:
            raise InvalidInput(f"block mode {mode!r} is not one of {', '.join(MODES)}")
        if len(reason) > MAX_REASON_LENGTH:
            raise InvalidInput(f"block reason is longer than {MAX_REASON_LENGTH} characters")
        now = time.time()
        block = Block(
            id="blk_" + secrets.token_hex(8),
            scope=scope,
            value=value,
            reason=reason,
            created_at=round(now, 3),
            expires_at=round(now + ttl_seconds, 3),
            mode=mode,
            source=source,
            detector=detector,
            score=score,
            explanation=explanation,
            incident_id=incident_id,
        )
        await self._write(tenant, block)
        return block

    async def _write(self, tenant: str, block: Block) -> None:
        ttl_ms = max(1, int((block.expires_at - time.time()) * 1000))
        ks = self._keyspace
        payload = json.dumps(block.public())
        try:
            version = await self._put(
                keys=[
                    ks.block_records(tenant),
                    ks.block(tenant, block.scope, block.value),
                    ks.block_version(tenant),
                ],
                args=[block.id, payload, ttl_ms, "1" if block.mode == "enforce" else "0"],
            )
        except RedisError as exc:
            self._snapshots.drop(tenant)  # written or not: the copy no longer knows
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        self._snapshots.wrote(tenant, int(version), block, payload)

    async def restore(self, tenant: str, block: Block) -> bool:
        """Write ``block`` back with the time it has left; False (nothing written) if it has
        expired meanwhile."""
        if block.expires_at <= time.time():
            return False
        await self._write(tenant, block)
        return True

    async def active(self, tenant: str) -> list[Block]:
        """The tenant's active blocks, soonest to expire first; expired records are pruned.
        The records are read only when the tenant's block version moved since this process
        last read or wrote them (``limiter.state.block_snapshots``)."""
        ks = self._keyspace
        records_key = ks.block_records(tenant)
        snapshots = self._snapshots
        try:
            version = block_version(await self._redis.get(ks.block_version(tenant)))
            blocks = snapshots.current(tenant, version)
            if blocks is None:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.get(ks.block_version(tenant))
                    pipe.hgetall(records_key)
                    read_at, records = await pipe.execute()
                blocks = snapshots.replace(tenant, block_version(read_at), records)
            now = time.time()
            active = [block for block in blocks.values() if block.expires_at > now]
            if len(active) < len(blocks):
                expired = [key for key, block in blocks.items() if block.expires_at <= now]
                await self._redis.hdel(records_key, *expired)
                snapshots.forget(tenant, expired)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return sorted(active, key=lambda block: block.expires_at)

    async def get(self, tenant: str, block_id: str) -> Block:
        try:
            payload = await self._redis.hget(self._keyspace.block_records(tenant), block_id)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        if payload is None:
            raise NotFound(f"no block with id {block_id!r}")
        block = Block(**json.loads(payload))
        if block.expires_at <= time.time():
            raise NotFound(f"no block with id {block_id!r}")
        return block

    async def remove(self, tenant: str, block_id: str, *, by_operator: bool = False) -> Block:
        """Lift a block at once; another active block on the same subject stays enforced.
        ``by_operator``: a person lifted it, so a detector's block is not imposed again for
        ``LIFT_SUPPRESSION_SECONDS``."""
        block = await self.get(tenant, block_id)
        ks = self._keyspace
        try:
            await self._remove(
                keys=[
                    ks.block_records(tenant),
                    ks.block(tenant, block.scope, block.value),
                    ks.block_version(tenant),
                ],
                args=[block.id],
            )
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        finally:
            self._snapshots.drop(tenant)
        for other in await self.active(tenant):
            if (other.scope, other.value, other.mode) == (block.scope, block.value, "enforce"):
                await self._write(tenant, other)
        if by_operator and block.source == "detector":
            try:
                await self._redis.set(
                    ks.lifted(tenant, block.scope, block.value), block.id,
                    ex=LIFT_SUPPRESSION_SECONDS,
                )  # fmt: skip
            except RedisError as exc:
                raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return block

    async def recently_lifted(self, tenant: str, scope: str, value: str) -> bool:
        """Whether a detector's block of this subject was lifted by hand lately."""
        try:
            found = await self._redis.exists(self._keyspace.lifted(tenant, scope, value))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return bool(found)
