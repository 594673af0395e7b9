"""Listing a tenant's blocks from a copy kept while its block version stands
(``limiter.state.block_snapshots``), against the session's real Redis: what another process
writes or lifts is listed at once, this process's own writes need no reread, expired blocks
leave the list, and a copy too old is reread whatever the version says."""

from __future__ import annotations

import json

import pytest
from redis.asyncio import Redis

from limiter.keyspace import Keyspace
from limiter.state.block_snapshots import BlockSnapshots, block_version
from limiter.state.blocks import Block, BlockStore
from tests.support.polling import eventually_awaited

pytestmark = pytest.mark.timeout(30)

KS = Keyspace()


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def values(blocks: list[Block]) -> list[str]:
    return sorted(block.value for block in blocks)


async def test_another_processs_blocks_and_lifts_are_listed_at_once(
    redis: Redis, tenant: str
) -> None:
    ours, theirs = BlockStore(redis, KS), BlockStore(redis, KS)
    await ours.create(tenant, "key", "k1", 600, "ours")
    assert values(await ours.active(tenant)) == ["k1"]

    made = await theirs.create(tenant, "key", "k2", 600, "theirs", source="detector")
    assert values(await ours.active(tenant)) == ["k1", "k2"]
    [listed] = [block for block in await ours.active(tenant) if block.value == "k2"]
    assert listed == made  # the record as written, not a stale or partial copy

    await theirs.remove(tenant, made.id)
    assert values(await ours.active(tenant)) == ["k1"]


async def test_own_writes_keep_the_copy_current_without_a_reread(redis: Redis, tenant: str) -> None:
    snapshots = BlockSnapshots()
    store = BlockStore(redis, KS, snapshots)
    assert await store.active(tenant) == []
    for n in range(20):
        await store.create(tenant, "ip", f"192.0.2.{n}", 600, "flood", source="detector")
        version = block_version(await redis.get(KS.block_version(tenant)))
        # the copy is of the version Redis holds now: the next listing reads no record
        copy = snapshots.current(tenant, version)
        assert copy is not None
        assert len(copy) == n + 1
    assert len(await store.active(tenant)) == 20


async def test_a_write_by_another_process_in_between_drops_the_copy(
    redis: Redis, tenant: str
) -> None:
    snapshots = BlockSnapshots()
    ours, theirs = BlockStore(redis, KS, snapshots), BlockStore(redis, KS)
    await ours.active(tenant)
    await theirs.create(tenant, "key", "theirs", 600, "theirs")
    await ours.create(tenant, "key", "ours", 600, "ours")  # the version moved by two
    version = block_version(await redis.get(KS.block_version(tenant)))
    assert snapshots.current(tenant, version) is None
    assert values(await ours.active(tenant)) == ["ours", "theirs"]


async def test_expired_blocks_leave_the_list_and_their_records_are_pruned(
    redis: Redis, tenant: str
) -> None:
    store = BlockStore(redis, KS)
    await store.create(tenant, "key", "short", 0.3, "short")
    await store.create(tenant, "key", "long", 600, "long")
    assert values(await store.active(tenant)) == ["long", "short"]

    async def only_long() -> bool:
        return values(await store.active(tenant)) == ["long"]

    await eventually_awaited(only_long, 5, "the expired block to leave the list")
    records = await redis.hgetall(KS.block_records(tenant))
    assert [json.loads(payload)["value"] for payload in records.values()] == ["long"]


async def test_a_copy_older_than_its_max_age_is_reread(redis: Redis, tenant: str) -> None:
    clock = ManualClock()
    store = BlockStore(redis, KS, BlockSnapshots(max_age=5.0, clock=clock))
    made = await store.create(tenant, "key", "k1", 600, "first reason")
    assert [block.reason for block in await store.active(tenant)] == ["first reason"]

    # a record rewritten without moving the version, as after a tenant's records were
    # erased and written again up to the same version
    record = made.public() | {"reason": "rewritten"}
    await redis.hset(KS.block_records(tenant), made.id, json.dumps(record))
    clock.now += 4.0
    assert [block.reason for block in await store.active(tenant)] == ["first reason"]
    clock.now += 2.0
    assert [block.reason for block in await store.active(tenant)] == ["rewritten"]


def test_bounds_are_validated_naming_the_bad_value() -> None:
    with pytest.raises(ValueError, match="max_age -1"):
        BlockSnapshots(max_age=-1)
    with pytest.raises(ValueError, match="max_tenants 0"):
        BlockSnapshots(max_tenants=0)


async def test_copies_are_kept_for_the_tenants_listed_last_only(redis: Redis, tenant: str) -> None:
    snapshots = BlockSnapshots(max_tenants=3)
    store = BlockStore(redis, KS, snapshots)
    tenants = [f"{tenant}-{n}" for n in range(5)]
    for name in tenants:
        await store.create(name, "key", "k", 600, "reason")
        assert values(await store.active(name)) == ["k"]
    assert snapshots.tenants == 3
    assert snapshots.current(tenants[0], 1) is None  # evicted: the next listing rereads
    assert snapshots.current(tenants[4], 1) is not None
    assert values(await store.active(tenants[0])) == ["k"]


async def test_a_listing_of_a_thousand_blocks_decodes_only_what_changed(
    redis: Redis, tenant: str
) -> None:
    # another process's write rereads the records, but only the new one is decoded: the
    # Block objects of the others are those of the previous copy
    ours, theirs = BlockStore(redis, KS), BlockStore(redis, KS)
    for n in range(1000):
        await theirs.create(tenant, "key", f"k{n}", 600, "flood", source="detector")
    before = {block.id: block for block in await ours.active(tenant)}
    await theirs.create(tenant, "key", "new", 600, "flood", source="detector")
    after = {block.id: block for block in await ours.active(tenant)}
    assert len(after) == 1001
    assert all(after[block_id] is block for block_id, block in before.items())
