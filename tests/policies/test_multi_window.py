"""A policy's windows decided at once, by the check script on a real Redis and by the
local store alike: denied if any denies, nothing used then, and the same deciding window."""

from __future__ import annotations

import secrets
import time

import msgspec
from redis.asyncio import Redis

from limiter.algorithms import NO_RETRY, Algorithm, Outcome, Reason, window_of, with_window
from limiter.emit import Decision
from limiter.keyspace import Keyspace
from limiter.policies.checks import answered, decided_check, policy_check
from limiter.policies.model import PolicyMode, PolicyWindow, Resolved
from limiter.sinks.events import EventIds, to_records
from limiter.store.base import Check
from limiter.store.memory import MemoryStore
from limiter.store.redis import RedisStore
from stream.events import decode, decode_entry
from stream.handlers import entry_record


def two_windows(tenant: str, algorithm: Algorithm, cost: int = 1, key: str = "k") -> Check:
    resolved = Resolved(
        "p", (PolicyWindow(3, 1), PolicyWindow(5, 60)), algorithm, PolicyMode.ENFORCE, None
    )
    return policy_check(tenant, key, resolved, Algorithm.SLIDING_WINDOW, cost)


async def test_lua_and_the_local_store_decide_several_windows_alike(
    redis: Redis, tenant: str
) -> None:
    store = RedisStore(redis, Keyspace())
    memory = MemoryStore()
    start = (time.time_ns() // 1_000_000 // 60_000 + 1) * 60_000  # a fresh minute
    # second by second: 3 allowed (the 1 s window's limit), then the 60 s window's 5
    schedule = [0, 0, 0, 0, 1000, 1000, 1000, 2000, 2000, 2000, 2000, 61_000]
    for algorithm in Algorithm:
        decided = []
        for at in schedule:
            check = two_windows(tenant, algorithm, key=algorithm.value)
            (lua,) = await store.decide([check], start + at)
            local = memory.decide_one(check, start + at)
            assert (lua, window_of(lua)) == (local, window_of(local)), (algorithm, at)
            decided.append(lua.allowed)
        assert decided.count(True) >= 5, (algorithm, decided)
        cost_too_high = two_windows(tenant, algorithm, cost=4, key="c" + algorithm.value)
        (lua,) = await store.decide([cost_too_high], start)
        assert lua.reason is Reason.COST_EXCEEDS_LIMIT
        assert lua.retry_ms == NO_RETRY
        assert window_of(lua) == 0  # waiting cannot help: that window decides


async def test_a_denial_uses_no_window_and_names_the_one_that_denied(
    redis: Redis, tenant: str
) -> None:
    store = RedisStore(redis, Keyspace())
    now = (time.time_ns() // 1_000_000 // 60_000 + 1) * 60_000
    check = two_windows(tenant, Algorithm.FIXED_WINDOW)
    outcomes = [(await store.decide([check], now + 10 * i))[0] for i in range(4)]
    assert [o.allowed for o in outcomes] == [True, True, True, False]
    # allowed: the window with the least remaining (the 1 s one: 2, 1, 0 against 4, 3, 2)
    assert [window_of(o) for o in outcomes] == [0, 0, 0, 0]
    assert decided_check(check, outcomes[3]).limit == 3
    # the 60 s window kept its 3 uses: the denial used none
    hourly = Check(tenant, "k", Algorithm.FIXED_WINDOW, 5, 60_000, 0)
    assert (await store.decide([hourly], now + 40))[0].remaining == 2
    # a second later the 1 s window is free again but the 60 s one runs out
    later = [(await store.decide([check], now + 1000 + i))[0] for i in range(3)]
    assert [o.allowed for o in later] == [True, True, False]
    assert window_of(later[1]) == 1  # 0 left of 5 against 1 of 3
    assert window_of(later[2]) == 1
    assert decided_check(check, later[2]).window_ms == 60_000


def test_the_deciding_windows_check_differs_only_in_its_limit_and_window() -> None:
    check = Check(
        "t", "k", Algorithm.SLIDING_WINDOW, 3, 1000, 2, "203.0.113.9", "u", "/r", "ua", "pro",
        17, ((3, 1000), (5, 60_000)), "free", True, "ab" * 16,
    )  # fmt: skip
    assert set(check) >= {"203.0.113.9", "ua", "pro", 17, "free", "ab" * 16}  # all given
    decided = decided_check(check, with_window(Outcome(False, 0, 9, 9, Reason.LIMIT), 1))
    assert type(decided) is Check
    assert decided == check._replace(limit=5, window_ms=60_000)
    assert decided_check(check, Outcome(True, 1, 9, NO_RETRY, Reason.OK)) is check


async def test_the_stream_entry_and_the_kafka_record_describe_the_deciding_window(
    redis: Redis, tenant: str
) -> None:
    stream = f"test:events:{secrets.token_hex(4)}"
    store = RedisStore(redis, Keyspace(), event_stream=stream, instance="n")
    resolved = Resolved(
        "paid", (PolicyWindow(100, 1), PolicyWindow(1, 3600)), None, PolicyMode.SHADOW, None
    )
    check = policy_check(tenant, "u", resolved, Algorithm.TOKEN_BUCKET)
    plain = Check(tenant, "v", Algorithm.TOKEN_BUCKET, 2, 1000, 1)
    now = time.time_ns() // 1_000_000
    outcomes = await store.decide([check, plain, check], now)
    assert [o.allowed for o in outcomes] == [True, True, False]
    assert answered(check, outcomes[2]).allowed  # shadow mode
    assert answered(plain, outcomes[1]) is outcomes[1]
    entries = await redis.xrange(stream)
    streamed = decode_entry(entry_record(*entries[0]))
    assert [(e.limit, e.window, e.policy, e.shadow) for e in streamed] == [
        (1, 3600, "paid", True), (2, 1, None, False), (1, 3600, "paid", True)]  # fmt: skip
    decisions = [
        Decision(now, decided_check(c, o), o, 0)
        for c, o in zip([check, plain, check], outcomes, strict=True)
    ]
    sent = [decode(r.value) for r in to_records(decisions, EventIds(), "n")]
    for one, other in zip(streamed, sent, strict=True):
        assert msgspec.structs.asdict(one) == msgspec.structs.asdict(other) | {
            "event_id": one.event_id
        }


def test_an_outcome_of_another_window_still_compares_as_a_plain_outcome() -> None:
    memory = MemoryStore(clock=lambda: 1_000_000)
    check = two_windows("t", Algorithm.FIXED_WINDOW)
    outcomes = [memory.decide_one(check) for _ in range(4)]
    assert outcomes[3] == (False, 0, 1000, 1000, Reason.LIMIT)
    assert isinstance(outcomes[3], Outcome)
    replaced = outcomes[3]._replace(reason=Reason.FAIL_OPEN)
    assert window_of(replaced) == window_of(outcomes[3])
