"""A streaming call that reaches Redis past its deadline changes nothing: the client gave up
on it and answered its checks by the failure policy, which the outage log counts."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from limiter.algorithms import Algorithm
from limiter.deadline import CallDeadline, wall_clock_ms
from limiter.errors import StoreUnavailable
from limiter.keyspace import Keyspace
from limiter.redis_client import redis_from_url
from limiter.store.base import Check
from limiter.store.redis import RedisStore
from tests.support.polling import eventually_awaited
from tests.support.servers import RedisServer

pytestmark = pytest.mark.timeout(60)


class SteppedClock:
    """This host's clock, stepped by ``shift_ms`` (as an NTP step or a bad clock would)."""

    def __init__(self) -> None:
        self.shift_ms = 0

    def __call__(self) -> int:
        return wall_clock_ms() + self.shift_ms


def checks(tenant: str, n: int = 3) -> list[Check]:
    return [
        Check(tenant, f"k{i}", algorithm, 10, 60_000, 1)
        for i, algorithm in zip(range(n), list(Algorithm) * n, strict=False)
    ]


async def counters(redis: Redis, keyspace: Keyspace, tenant: str) -> list[bytes]:
    return [key async for key in redis.scan_iter(match=f"*{tenant}*")]


def test_the_margin_leaves_the_largest_call_time_to_run() -> None:
    assert (CallDeadline(0.25).margin_ms, CallDeadline(0.25).budget_ms) == (100, 150)
    assert (CallDeadline(1.0).margin_ms, CallDeadline(1.0).budget_ms) == (400, 600)
    assert (CallDeadline(0.06).margin_ms, CallDeadline(0.06).budget_ms) == (30, 30)


async def test_a_call_in_time_is_decided_and_streamed(redis: Redis, tenant: str) -> None:
    stream = f"test:events:{secrets.token_hex(4)}"
    store = RedisStore(redis, Keyspace(), event_stream=stream, deadline=CallDeadline(0.25))
    await store.load()
    outcomes = await store.decide(checks(tenant))
    assert [o.allowed for o in outcomes] == [True, True, True]
    assert await redis.xlen(stream) == 1


async def test_a_call_past_its_deadline_changes_nothing(redis: Redis, tenant: str) -> None:
    stream = f"test:events:{secrets.token_hex(4)}"
    keyspace = Keyspace()
    clock = SteppedClock()
    store = RedisStore(redis, keyspace, event_stream=stream, deadline=CallDeadline(0.25, clock))
    await store.load()
    await store.decide(checks(tenant, 1))
    before = {key: await redis.dump(key) for key in await counters(redis, keyspace, tenant)}
    assert len(before) == 1
    # the call leaves this host a second before Redis sees it start: past its deadline
    clock.shift_ms = -1000
    with pytest.raises(StoreUnavailable, match="past its deadline"):
        await store.decide(checks(tenant))
    after = {key: await redis.dump(key) for key in await counters(redis, keyspace, tenant)}
    assert after == before
    assert await redis.xlen(stream) == 1
    clock.shift_ms = 0
    assert [o.remaining for o in await store.decide(checks(tenant))] == [8, 9, 9]


async def test_a_store_without_a_stream_sends_no_deadline(redis: Redis, tenant: str) -> None:
    clock = SteppedClock()
    store = RedisStore(redis, Keyspace(), deadline=CallDeadline(0.25, clock))
    await store.load()
    clock.shift_ms = -1000
    assert [o.allowed for o in await store.decide(checks(tenant))] == [True, True, True]


async def test_a_redis_clock_off_by_more_than_the_margin_drops_the_deadlines(
    redis: Redis, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = SteppedClock()
    clock.shift_ms = -1000  # Redis's clock a second ahead: every deadline would be past
    stream = f"test:events:{secrets.token_hex(4)}"
    store = RedisStore(redis, Keyspace(), event_stream=stream, deadline=CallDeadline(0.25, clock))
    with caplog.at_level(logging.ERROR, "ratewatch.limiter"):
        await store.load()
    assert "calls carry no deadline" in caplog.text
    assert [o.allowed for o in await store.decide(checks(tenant))] == [True, True, True]
    assert await redis.xlen(stream) == 1


async def refused_calls(redis: Redis) -> int:
    """Calls the check script refused as past their deadline."""
    stats = await redis.info("errorstats")
    return int(stats.get("errorstat_PASTDEADLINE", {}).get("count", 0))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)  # never leave it frozen
    server.stop()


async def test_a_call_in_flight_while_redis_is_frozen_is_not_run_when_it_thaws(
    own_redis: RedisServer,
) -> None:
    assert own_redis.process is not None
    timeout = 0.25
    client = redis_from_url(own_redis.url, timeout=timeout)
    observer = Redis.from_url(own_redis.url)
    keyspace = Keyspace("frozen")
    store = RedisStore(
        client, keyspace, event_stream=keyspace.events, deadline=CallDeadline(timeout)
    )
    try:
        await store.load()
        await store.decide(checks("t", 1))
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailable, match="did not answer"):
                await store.decide(checks("t"))
            await asyncio.sleep(timeout)  # frozen well past the call's deadline
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)

        async def refused() -> bool:
            return await refused_calls(observer) > 0

        # the frozen call runs once Redis thaws, and the script refuses it
        await eventually_awaited(refused, 10, "the thawed call refused", 0.01)
        assert await refused_calls(observer) == 1
        assert await observer.xlen(keyspace.events) == 1
        assert [o.remaining for o in await store.decide(checks("t"))] == [8, 9, 9]
        assert await observer.xlen(keyspace.events) == 2
    finally:
        await client.aclose(close_connection_pool=True)
        await observer.aclose()
