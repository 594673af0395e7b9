"""The check script appends each batch's decisions to the Redis event stream atomically."""

from __future__ import annotations

import secrets
import time

import msgspec
import pytest
from redis.asyncio import Redis

from limiter.algorithms import Algorithm, Reason
from limiter.emit import Decision
from limiter.errors import ConfigError
from limiter.keyspace import Keyspace
from limiter.sinks.events import EventIds, to_records
from limiter.store.base import Check
from limiter.store.redis import RedisStore
from stream.events import MalformedEvent, decode, decode_entry, entry_offset
from stream.handlers import Record, entry_record


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


async def test_both_encodings_of_a_decision_read_back_as_the_same_event(
    redis: Redis, tenant: str
) -> None:
    """The stream entry (the store's part and the check script's part) and the Kafka record
    are two encodings of one contract: a decision read back from either is the same event,
    field by field, whatever the reason."""
    stream = f"test:events:{secrets.token_hex(4)}"
    keyspace = Keyspace()
    store = RedisStore(redis, keyspace, event_stream=stream, instance="node-1")
    await redis.set(keyspace.block(tenant, "ip", "198.51.100.9"), "b1", px=60_000)
    checks = [
        Check(tenant, "user:1", Algorithm.SLIDING_WINDOW, 1, 60_000, 1, "192.0.2.7", "u1",
              "/login", "curl/8", segment="pro"),
        Check(tenant, "user:1", Algorithm.SLIDING_WINDOW, 1, 60_000, 1),
        Check(tenant, "user:2", Algorithm.FIXED_WINDOW, 5, 10_000, 1, "198.51.100.9"),
        Check(tenant, "b", Algorithm.TOKEN_BUCKET, 5, 10_000, 7, user_id="u2", route="/r"),
    ]  # fmt: skip
    now = time.time_ns() // 1_000_000
    outcomes = await store.decide(checks, now)
    assert [o.reason for o in outcomes] == [
        Reason.OK, Reason.LIMIT, Reason.BLOCKED, Reason.COST_EXCEEDS_LIMIT]  # fmt: skip
    ((entry_id, fields),) = await redis.xrange(stream)
    from_stream = decode_entry(entry_record(entry_id, fields))
    # started_ns 0: the store writes latency 0, as the Kafka side is told here
    decisions = [Decision(now, c, o, 0) for c, o in zip(checks, outcomes, strict=True)]
    from_kafka = [decode(r.value) for r in to_records(decisions, EventIds(), "node-1")]
    for streamed, sent in zip(from_stream, from_kafka, strict=True):
        assert msgspec.structs.asdict(streamed) == msgspec.structs.asdict(sent) | {
            "event_id": streamed.event_id
        }


def test_an_entry_of_an_older_limiter_still_decodes() -> None:
    """Fields added to an entry's check later have defaults: here, ``segment``."""
    check = b'["t","k","fixed_window",5,10,1,null,null,null,null,3,"n"]'
    (event,) = decode_entry(Record(7, b"1700000000000 [[" + check + b',true,4,1500,-1,"ok"]]'))
    assert (event.tenant, event.window, event.latency_us, event.segment) == ("t", 10, 3, None)
    assert (event.allowed, event.remaining, event.reset_in, event.reason) == (True, 4, 2, "ok")


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
