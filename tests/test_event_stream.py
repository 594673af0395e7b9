"""The check script appends each batch's decisions to the Redis event stream atomically."""

from __future__ import annotations

import secrets

import pytest
from redis.asyncio import Redis

from limiter.algorithms import Algorithm
from limiter.errors import ConfigError
from limiter.keyspace import Keyspace
from limiter.store.base import Check
from limiter.store.redis import RedisStore
from stream.events import MalformedEvent
from stream.redis_entries import decode_entry, entry_offset, entry_record


async def test_a_batch_becomes_one_entry_with_every_decision(redis: Redis, tenant: str) -> None:
    stream = f"test:events:{secrets.token_hex(4)}"
    store = RedisStore(redis, Keyspace(), event_stream=stream, instance="node-1")
    checks = [
        Check(tenant, "user:1", Algorithm.SLIDING_WINDOW, 2, 60_000, 1, "192.0.2.7", "u1",
              "/login", "curl/8", segment="pro"),
        Check(tenant, "user:1", Algorithm.SLIDING_WINDOW, 2, 60_000, 1),
        Check(tenant, "user:1", Algorithm.SLIDING_WINDOW, 2, 60_000, 1),
        Check(tenant, "b", Algorithm.TOKEN_BUCKET, 5, 10_000, 7),
    ]  # fmt: skip
    outcomes = await store.decide(checks)
    entries = await redis.xrange(stream)
    assert len(entries) == 1
    entry_id, fields = entries[0]
    events = decode_entry(entry_record(entry_id, fields))
    assert len(events) == 4
    first = events[0]
    assert (first.tenant, first.key, first.algorithm, first.limit, first.window, first.cost) == (
        tenant, "user:1", "sliding_window", 2, 60, 1)  # fmt: skip
    assert (first.ip, first.user_id, first.route, first.user_agent, first.instance) == (
        "192.0.2.7", "u1", "/login", "curl/8", "node-1")  # fmt: skip
    assert [e.segment for e in events] == ["pro", None, None, None]
    assert (
        [e.allowed for e in events] == [o.allowed for o in outcomes] == [True, True, False, False]
    )
    assert [e.reason for e in events] == ["ok", "ok", "limit", "cost_exceeds_limit"]
    assert [e.remaining for e in events] == [o.remaining for o in outcomes]
    assert all(e.reset_in == -(-o.reset_ms // 1000) for e, o in zip(events, outcomes, strict=True))
    assert len({e.event_id for e in events}) == 4
    # reading the same entry again yields the same ids (replays stay idempotent)
    assert [e.event_id for e in decode_entry(entry_record(entry_id, fields))] == [
        e.event_id for e in events
    ]
    assert entry_offset(entry_id.decode()) > 0


async def test_no_stream_writes_nothing(redis: Redis, tenant: str) -> None:
    store = RedisStore(redis, Keyspace())
    await store.decide([Check(tenant, "k", Algorithm.FIXED_WINDOW, 1, 1000, 1)])
    assert await redis.exists(Keyspace().events) == 0


async def test_a_cluster_cannot_carry_the_stream(redis: Redis) -> None:
    with pytest.raises(ConfigError, match="single Redis server"):
        RedisStore(redis, Keyspace(), cluster=True, event_stream="x")


@pytest.mark.parametrize(
    "fields", [{}, {b"ts": b"1"}, {b"ts": b"x", b"d": b"[]"}, {b"ts": b"1", b"d": b"[[1,2]]"}]
)
def test_a_malformed_entry_is_reported_not_crashed_on(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(MalformedEvent):
        decode_entry(entry_record("1-0", fields))
