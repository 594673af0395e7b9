"""The local denial cache never allows, and never denies what Redis would allow.

The property tests decide random sequences of checks on a real Redis twice, under a
controlled clock: through two limiters' denial caches (``CachedSubmit``) in front of one
keyspace, and straight on a second keyspace.  A cached denial changes no counter, so the two
keyspaces hold the same state as long as every cached answer is one Redis would have given:
each check the caches answered must be one Redis denies at that instant (reason ``limit``,
the same reset, no longer retry), and every other check must be decided alike.

Windows are a minute or more and each example takes well under a second, so no counter
expires in real time while the controlled clock says otherwise (see
``test_algorithms_parity``).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from limiter.algorithms import NO_RETRY, Algorithm, Outcome, Reason, window_of, with_window
from limiter.denial_cache import CachedSubmit, DenialCache
from limiter.denial_stream import DenialStream
from limiter.keyspace import Keyspace
from limiter.outage.replay import StreamReplay
from limiter.redis_client import redis_from_url
from limiter.store.base import Check
from limiter.store.redis import RedisStore
from stream.events import decode_entry
from stream.handlers import entry_record
from tests.support.polling import eventually, turns
from tests.support.servers import RedisServer

# anyio marked at collection: parametrized async tests keep their parameters
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

MINUTE = 60_000
START = 29_000_000 * MINUTE + 12_345  # not on a window boundary


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def check(
    key: str = "k",
    algorithm: Algorithm = Algorithm.SLIDING_WINDOW,
    limit: int = 2,
    window_ms: int = MINUTE,
    cost: int = 1,
    tenant: str = "t",
) -> Check:
    return Check(tenant, key, algorithm, limit, window_ms, cost)


def denial(retry_ms: int = 1000, reset_ms: int = 1000) -> Outcome:
    return Outcome(False, 0, reset_ms, retry_ms, Reason.LIMIT)


ALLOWED = Outcome(True, 1, 1000, NO_RETRY, Reason.OK)


# --- the cache alone ----------------------------------------------------------------


def test_a_denial_is_answered_until_its_retry_time_then_asked_again() -> None:
    cache = DenialCache(10)
    c = check()
    cache.learn(c, denial(retry_ms=500, reset_ms=700), sent=1000)
    assert cache.answer(c, 1000) == Outcome(False, 0, 700, 500, Reason.LIMIT)
    assert cache.answer(c, 1499) == Outcome(False, 0, 201, 1, Reason.LIMIT)
    assert cache.answer(c, 1500) is None  # the retry time: Redis decides again
    assert len(cache) == 0  # an expired entry goes when looked up
    assert (cache.hits, cache.misses, cache.stores) == (2, 1, 1)


def test_a_smaller_cost_another_limit_or_a_cost_above_the_limit_asks_redis() -> None:
    cache = DenialCache(10)
    cache.learn(check(cost=2, limit=5), denial(), sent=0)
    assert cache.answer(check(cost=1, limit=5), 10) is None  # might fit where 2 did not
    assert cache.answer(check(cost=0, limit=5), 10) is None  # a read: a bucket allows it
    assert cache.answer(check(cost=2, limit=6), 10) is None  # another limit
    assert cache.answer(check(cost=6, limit=5), 10) is None  # cost_exceeds_limit is Redis's
    assert cache.answer(check(cost=3, limit=5), 10) is not None  # more than denied: denied
    assert cache.answer(check(cost=2, limit=5, window_ms=2 * MINUTE), 10) is None
    assert cache.answer(check(cost=2, limit=5, algorithm=Algorithm.FIXED_WINDOW), 10) is None
    assert cache.answer(check(cost=2, limit=5, tenant="other"), 10) is None


def test_only_limit_denials_with_a_retry_time_are_kept() -> None:
    cache = DenialCache(10)
    for outcome in (
        ALLOWED,
        Outcome(False, 0, 1000, 1000, Reason.BLOCKED),
        Outcome(False, 3, 1000, NO_RETRY, Reason.COST_EXCEEDS_LIMIT),
        Outcome(False, 0, 1000, 1000, Reason.FAIL_CLOSED),
        Outcome(False, 0, 1000, NO_RETRY, Reason.LIMIT),  # a block without TTL's kind
    ):
        cache.learn(check(), outcome, sent=0)
    assert len(cache) == 0
    assert cache.stores == 0


def test_an_allowed_check_at_another_limit_drops_the_denial() -> None:
    # a token bucket shared by two limits refills at the rate of the check that reads it
    cache = DenialCache(10)
    bucket = Algorithm.TOKEN_BUCKET
    cache.learn(check(algorithm=bucket, limit=2), denial(), sent=0)
    cache.learn(check(algorithm=bucket, limit=2, cost=0), ALLOWED, sent=1)  # same limit: kept
    assert len(cache) == 1
    cache.learn(check(algorithm=bucket, limit=100), ALLOWED, sent=2)
    assert cache.answer(check(algorithm=bucket, limit=2), 3) is None


def test_a_sliding_windows_reset_follows_the_windows_past_the_one_it_knew() -> None:
    cache = DenialCache(10)
    # denied 100 ms before the window's end, retry well into the next window
    cache.learn(check(), denial(retry_ms=30_000, reset_ms=100), sent=0)
    assert cache.answer(check(), 50).reset_ms == 50  # type: ignore[union-attr]
    assert cache.answer(check(), 100).reset_ms == MINUTE  # type: ignore[union-attr]
    assert cache.answer(check(), 20_100).reset_ms == 40_000  # type: ignore[union-attr]


def test_the_bound_evicts_the_least_recently_used_denial() -> None:
    cache = DenialCache(3)
    for index in range(3):
        cache.learn(check(key=f"k{index}"), denial(), sent=0)
    assert cache.answer(check(key="k0"), 1) is not None  # k0 used: k1 is the oldest now
    cache.learn(check(key="k3"), denial(), sent=1)
    assert len(cache) == 3
    assert cache.evictions == 1
    assert cache.answer(check(key="k1"), 2) is None
    assert all(cache.answer(check(key=k), 2) is not None for k in ("k0", "k2", "k3"))
    for index in range(4, 1004):  # many more: still three
        cache.learn(check(key=f"k{index}"), denial(), sent=2)
    assert len(cache) == 3
    assert cache.evictions == 1001


def test_the_bound_is_checked() -> None:
    with pytest.raises(ValueError, match="0"):
        DenialCache(0)


class Recorded:
    """A ``DenialLog`` that keeps what it is given."""

    def __init__(self) -> None:
        self.decisions: list[tuple[Check, Outcome]] = []

    def record(self, checks: Sequence[Check], outcomes: Sequence[Outcome]) -> None:
        self.decisions += zip(checks, outcomes, strict=True)


async def test_a_batch_sends_only_what_the_cache_does_not_answer_in_order() -> None:
    sent: list[list[Check]] = []

    async def store(checks: Sequence[Check]) -> list[Outcome]:
        sent.append(list(checks))
        return [ALLOWED for _ in checks]

    cache = DenialCache(10, clock=Clock(0))
    cache.learn(check(key="b"), denial(), sent=0)
    log = Recorded()
    submit = CachedSubmit(cache, store, log)
    batch = [check(key="a"), check(key="b"), check(key="c"), check(key="b", cost=0)]
    outcomes = await submit.submit(batch)
    assert sent == [[batch[0], batch[2], batch[3]]]
    assert [o.allowed for o in outcomes] == [True, False, True, True]
    assert log.decisions == [(batch[1], outcomes[1])]  # a cached decision is still recorded
    assert await submit.submit([check(key="b")]) == [denial(1000, 1000)]
    assert len(sent) == 1
    assert len(log.decisions) == 2


# --- against the real store -----------------------------------------------------------


class Twins:
    """Two limiters with denial caches on one keyspace, and the same checks straight on
    another: what Redis would have answered without the caches."""

    def __init__(self, redis: Redis, clock: Clock) -> None:
        prefix = "dc" + secrets.token_hex(4)
        self.clock = clock
        self.cached_store = RedisStore(redis, Keyspace(prefix + "a"))
        self.plain_store = RedisStore(redis, Keyspace(prefix + "b"))
        self.sent: list[Check] = []
        self.caches = [DenialCache(64, clock), DenialCache(64, clock)]
        self.limiters = [CachedSubmit(cache, self._store) for cache in self.caches]
        self.cached_answers = 0

    async def _store(self, checks: Sequence[Check]) -> list[Outcome]:
        self.sent += checks
        return await self.cached_store.decide(checks, self.clock.now)

    async def decide(self, limiter: int, batch: list[Check]) -> None:
        self.sent = []
        outcomes = await self.limiters[limiter].submit(batch)
        expected = await self.plain_store.decide(batch, self.clock.now)
        sent = iter(self.sent)
        upcoming = next(sent, None)
        for check_, outcome, redis_says in zip(batch, outcomes, expected, strict=True):
            if check_ is upcoming:  # Redis answered it
                upcoming = next(sent, None)
                assert outcome == redis_says, (check_, self.clock.now)
                continue
            self.cached_answers += 1
            assert not outcome.allowed, outcome
            assert outcome.reason is Reason.LIMIT, outcome
            assert not redis_says.allowed, (check_, outcome, redis_says, self.clock.now)
            assert redis_says.reason is Reason.LIMIT
            assert outcome.remaining == 0
            assert 0 < outcome.retry_ms <= redis_says.retry_ms
            if check_.algorithm is Algorithm.TOKEN_BUCKET:
                assert outcome.reset_ms <= redis_says.reset_ms
            else:
                assert outcome.reset_ms == redis_says.reset_ms
        assert upcoming is None


async def run_sequence(port: int, data: st.DataObject, algorithms: list[Algorithm]) -> int:
    redis = Redis(host="127.0.0.1", port=port)
    try:
        twins = Twins(redis, Clock(START + data.draw(st.integers(0, MINUTE), label="start")))
        counters = []
        for index in range(data.draw(st.integers(1, 3), label="counters")):
            algorithm = data.draw(st.sampled_from(algorithms), label="algorithm")
            window = data.draw(st.sampled_from([MINUTE, 90_000, 5 * MINUTE]), label="window")
            # a token bucket shared by several limits refills at each one's rate: one limit
            limits = st.lists(st.integers(1, 4), min_size=1, max_size=1 if algorithm is
                              Algorithm.TOKEN_BUCKET else 2, unique=True)  # fmt: skip
            counters.append((f"k{index}", algorithm, window, data.draw(limits, label="limits")))
        for _ in range(data.draw(st.integers(1, 30), label="steps")):
            window = max(c[2] for c in counters)
            twins.clock.now += data.draw(
                st.one_of(st.just(0), st.integers(1, 2000), st.integers(1, window)), label="wait"
            )
            batch = []
            for _ in range(data.draw(st.integers(1, 3), label="batch size")):
                key, kind, window_ms, its_limits = data.draw(st.sampled_from(counters))
                limit = data.draw(st.sampled_from(its_limits), label="limit")
                cost = data.draw(st.integers(0, limit + 1), label="cost")
                batch.append(check(key, kind, limit, window_ms, cost, "t"))
            await twins.decide(data.draw(st.integers(0, 1), label="limiter"), batch)
        return twins.cached_answers
    finally:
        await redis.aclose()


PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("algorithm", list(Algorithm))
@PROPERTY_SETTINGS
@given(data=st.data())
def test_every_cached_answer_is_a_denial_redis_gives_at_that_instant(
    redis_server: RedisServer, algorithm: Algorithm, data: st.DataObject
) -> None:
    asyncio.run(run_sequence(redis_server.port, data, [algorithm]))


@pytest.mark.timeout(120)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_every_cached_answer_is_right_with_algorithms_interleaved(
    redis_server: RedisServer, data: st.DataObject
) -> None:
    asyncio.run(run_sequence(redis_server.port, data, list(Algorithm)))


@pytest.mark.parametrize("algorithm", list(Algorithm))
async def test_a_counter_over_its_limit_is_answered_by_the_caches(
    redis: Redis, algorithm: Algorithm
) -> None:
    """The property above holds for the answers the caches give: here they give some, on
    both limiters, after one denial each, until the retry time."""
    twins = Twins(redis, Clock(START))
    over = [check("k", algorithm, 2, MINUTE, 1)]
    for _ in range(3):
        await twins.decide(0, over)
    assert twins.cached_answers == 0  # allowed, allowed, denied by Redis
    await twins.decide(0, over)
    await twins.decide(1, over)  # the other limiter learns it from Redis
    await twins.decide(1, over)
    assert twins.cached_answers == 2
    twins.clock.now += 10 * MINUTE  # past every retry time: Redis decides, and allows
    await twins.decide(0, over)
    assert twins.cached_answers == 2


# --- the cached decisions into the embedded stream ------------------------------------


async def test_cached_decisions_wait_for_redis_then_go_to_the_spool_at_shutdown(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis")  # not running yet
    keyspace = Keyspace("ds" + secrets.token_hex(4))
    client = redis_from_url(server.url, timeout=0.5)
    spool = Recorded()
    stream = DenialStream(StreamReplay(client, keyspace), "n1", fallback=spool, interval=0.001)
    stream.start()
    try:
        for index in range(3):
            stream.record([check(key=f"k{index}")], [denial()])
        await turns()
        assert stream.appended == 0  # Redis does not answer: kept, retried
        server.start()
        await eventually(lambda: stream.appended == 3, 10, "3 decisions appended")
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(keyspace.events))
        events = [e for i, f in entries for e in decode_entry(entry_record(i, f))]
        assert [(e.key, e.allowed, e.reason) for e in events] == [
            (f"k{index}", False, "limit") for index in range(3)
        ]
        server.stop()
        stream.record([check(key="late")], [denial()])
    finally:
        await stream.close()  # Redis gone: what is queued goes to the outage spool
        server.stop()
        await client.aclose()
    assert [c.key for c, _ in spool.decisions] == ["late"]
    assert (stream.appended, stream.handed_over, stream.dropped) == (3, 1, 0)


# --- a policy's checks of several windows ----------------------------------------------


def policy_check(windows: tuple[tuple[int, int], ...], key: str = "acct") -> Check:
    limit, window_ms = windows[0]
    return check(key=key, limit=limit, window_ms=window_ms)._replace(windows=windows, policy="free")


def test_a_policy_denial_is_kept_under_the_window_that_decided_it() -> None:
    cache = DenialCache(10)
    windows = ((50, MINUTE), (3, 60 * MINUTE))
    multi = policy_check(windows)
    cache.learn(multi, with_window(denial(retry_ms=5000), 1), sent=1000)

    hit = cache.answer(multi, 1001)
    assert hit is not None
    assert not hit.allowed
    assert window_of(hit) == 1  # the answer describes the hour, which denied
    # the minute's counter was not the one over its limit: a check of it alone goes to Redis
    assert cache.answer(check(key="acct", limit=50, window_ms=MINUTE), 1001) is None
    hour = cache.answer(check(key="acct", limit=3, window_ms=60 * MINUTE), 1001)
    assert hour is not None
    assert window_of(hour) == 0
    assert cache.answer(multi, 1000 + 5000) is None  # the retry time passed


def test_a_plain_denial_of_one_window_denies_the_policy_that_holds_it() -> None:
    cache = DenialCache(10)
    cache.learn(check(key="acct", limit=3, window_ms=60 * MINUTE), denial(retry_ms=900), sent=10)
    hit = cache.answer(policy_check(((50, MINUTE), (3, 60 * MINUTE))), 11)
    assert hit is not None
    assert window_of(hit) == 1
    assert cache.answer(policy_check(((50, MINUTE), (4, 60 * MINUTE))), 11) is None


def test_policy_checks_through_the_cache_are_decided_as_redis_decides(
    redis_server: RedisServer,
) -> None:
    """Two windows on real Redis: every cached answer is a denial Redis gives as well."""
    asyncio.run(_policy_checks_twice(redis_server.url))


async def _policy_checks_twice(url: str) -> None:
    redis = redis_from_url(url, 2.0)
    try:
        prefix = f"dc-policy-{secrets.token_hex(4)}"
        direct = RedisStore(redis, Keyspace(prefix + "-direct"))
        cached_store = RedisStore(redis, Keyspace(prefix + "-cached"))
        await direct.load()
        await cached_store.load()
        cache = DenialCache(100)
        submit = CachedSubmit(cache, cached_store.decide)
        windows = ((3, MINUTE), (5, 60 * MINUTE))
        # the minute denies the 4th to 6th check of a key; the hour would deny the 6th too
        for step in range(12):
            multi = policy_check(windows, key=f"acct-{step // 6}")
            expected = (await direct.decide([multi]))[0]
            got = (await submit.submit([multi]))[0]
            assert (got.allowed, got.reason, window_of(got)) == (
                expected.allowed,
                expected.reason,
                window_of(expected),
            )
        assert cache.hits == 4  # the 5th and 6th checks of each key
    finally:
        await redis.aclose()
        await redis.connection_pool.disconnect()
