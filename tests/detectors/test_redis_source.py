"""Detection's reader of the Valkey event stream: its reads are acknowledged as they are
delivered (``NOACK``, no ``XACK`` after each), so detection never holds back the stream's
trimming, and entries an earlier reader left pending are acknowledged when the group is
ensured."""

from __future__ import annotations

import secrets

import pytest
from redis.asyncio import Redis

from detectors.redis_source import GROUP, RedisDecisionSource
from limiter.algorithms import Algorithm
from limiter.keyspace import Keyspace
from limiter.store.base import Check
from limiter.store.redis import RedisStore

pytestmark = pytest.mark.timeout(30)


async def pending(redis: Redis, stream: str) -> int:
    return int((await redis.xpending(stream, GROUP))["pending"])


async def acks(redis: Redis) -> int:
    """``XACK`` commands the server has run (this test's server runs one test at a time)."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xack", {}).get("calls", 0))


async def test_a_read_returns_every_new_decision_and_leaves_nothing_pending(
    redis: Redis, tenant: str
) -> None:
    stream = f"test:events:{secrets.token_hex(4)}"
    source = RedisDecisionSource(redis, stream, count=2)
    await source.ensure_group()
    assert await source.read_available() == []
    limiter = RedisStore(redis, Keyspace(), event_stream=stream)
    for i in range(5):  # five entries of two decisions each: read in pages of two entries
        await limiter.decide(
            [Check(tenant, f"k{i}-{j}", Algorithm.FIXED_WINDOW, 10, 60_000, 1) for j in range(2)]
        )
    acked = await acks(redis)
    events = await source.read_available()
    assert await acks(redis) == acked  # the reads acknowledged them
    assert sorted(event.key for event in events) == sorted(
        f"k{i}-{j}" for i in range(5) for j in range(2)
    )
    assert {event.tenant for event in events} == {tenant}
    assert await pending(redis, stream) == 0
    assert await source.read_available() == []  # nothing delivered twice


async def test_entries_an_earlier_reader_left_pending_are_acknowledged_at_start(
    redis: Redis,
) -> None:
    stream = f"test:events:{secrets.token_hex(4)}"
    await redis.xgroup_create(stream, GROUP, id="$", mkstream=True)
    for i in range(5):
        await redis.xadd(stream, {b"x": str(i).encode()})
    # read and never acknowledged, as a reader that acknowledged after reading left them
    await redis.xreadgroup(GROUP, "detect", {stream: ">"}, count=3)
    assert await pending(redis, stream) == 3
    source = RedisDecisionSource(redis, stream, count=2)
    await source.ensure_group()  # pages of two: every page acknowledged
    assert await pending(redis, stream) == 0
    assert await source.read_available() == []  # the other two are malformed: skipped
    assert await pending(redis, stream) == 0
