"""The two decision stores decide alike: the Python reference (``MemoryStore``) and the Lua
scripts (``RedisStore`` on a real Redis).

Every decision is made under a controlled clock (``now_ms`` is passed explicitly).  Redis
expires keys in *real* time, which the controlled clock does not follow: a counter key with
a TTL of a few milliseconds could vanish between two steps that the controlled clock puts
at the same instant, and one with a long TTL outlives a jump of the controlled clock.  So the
property tests run each script call in a MULTI that reads the TTL the script gave each
counter key (checked against ``state_ttl_ms``; a write that kept the key's expiry must keep
the very instant ``state_ttl_ms`` gives) and then PERSISTs it, and the harness expires
the key itself when the controlled clock reaches that TTL: Redis's expiry, on the clock the
decisions use, as on a live server whose scripts read Redis's own clock.  (Redis 7.0 may
delete a key at once on a PEXPIRE of 1 ms, when its clock ticks during the command; where
that may have happened, both stores start afresh, see ``StorePair.decide``.)  The named
edge cases use the plain client, at instants where no key can expire in real time while a
test runs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from limiter.algorithms import NO_RETRY, Algorithm, Outcome, Reason, state_ttl_ms
from limiter.coalescer import Coalescer, Decide
from limiter.keyspace import Keyspace
from limiter.store.base import Check
from limiter.store.memory import MemoryStore
from limiter.store.redis import RedisStore
from tests.support.servers import RedisServer

# anyio marked here, at collection: parametrized async tests lose their parameters when the
# conftest marks them only afterwards
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

KEYSPACE = Keyspace()
HOUR = 3_600_000
MINUTE = 60_000
# An instant on a boundary of every window used by the named edge cases.
EPOCH = 472_222 * HOUR
# How far a block TTL Redis reports may lag the one the test knows: Redis counts in real time.
REDIS_TTL_SLACK_MS = 50


class Clock:
    """A controlled clock in epoch milliseconds."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def counter_key(check: Check) -> str:
    return KEYSPACE.counter(check.tenant, check.algorithm, check.window_ms, check.key)


def _ms(time_reply: tuple[int, int]) -> int:
    seconds, microseconds = time_reply
    return seconds * 1000 + microseconds // 1000


class PersistingRedis(Redis):
    """A client whose EVALSHA runs in a MULTI that reads, then removes, the expiry the script
    gave every counter key it names (see the module docstring).  TIME before and after the
    script brackets the instant the script's TTLs count from."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script_time = (0, 0)  # ms: no earlier than the script's clock, no later
        self.expire_times: dict[str, int] = {}  # key -> PEXPIRETIME (-1: none, -2: no key)

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        counters = list(
            dict.fromkeys(str(key) for key in keys_and_args[:numkeys] if ":c:" in str(key))
        )
        async with self.pipeline(transaction=True) as pipe:
            pipe.time()
            pipe.evalsha(sha, numkeys, *keys_and_args)
            for key in counters:
                pipe.pexpiretime(key)
            pipe.time()
            for key in counters:
                pipe.persist(key)
            replies = await pipe.execute()
        before, result, *expire_times = replies[: 3 + len(counters)]
        after = expire_times.pop()
        self.script_time = (_ms(before), _ms(after))
        self.expire_times = dict(zip(counters, expire_times, strict=True))
        return result


def assert_sane(check: Check, outcome: Outcome) -> None:
    """What every decision of an unblocked check must satisfy."""
    context = f"{check} -> {outcome}"
    assert 0 <= outcome.remaining <= check.limit, context
    if check.algorithm is Algorithm.TOKEN_BUCKET:
        assert 0 <= outcome.reset_ms <= check.window_ms, context
    else:
        assert 1 <= outcome.reset_ms <= check.window_ms, context
    if check.cost > check.limit:
        assert outcome == (
            False,
            outcome.remaining,
            outcome.reset_ms,
            NO_RETRY,
            Reason.COST_EXCEEDS_LIMIT,
        ), context
    elif outcome.allowed:
        assert outcome.reason is Reason.OK, context
        assert outcome.retry_ms == NO_RETRY, context
    else:
        assert outcome.reason is Reason.LIMIT, context
        assert outcome.retry_ms >= 1, context
        # (a cost of 0 is denied only over the limit, once the limit was lowered)
        assert check.cost > outcome.remaining or check.cost == 0 == outcome.remaining, context
        if check.algorithm is Algorithm.FIXED_WINDOW:
            assert outcome.retry_ms == outcome.reset_ms, context
        elif check.algorithm is Algorithm.TOKEN_BUCKET:
            assert outcome.retry_ms <= check.window_ms, context
        else:
            assert outcome.retry_ms <= outcome.reset_ms + check.window_ms, context


class RedisExpiryRace(Exception):
    """Redis may have deleted a key with a 1 ms TTL at once (see ``StorePair.decide``)."""


def fresh_tenant() -> str:
    return "p" + uuid.uuid4().hex


class StorePair:
    """Both stores under one controlled clock; every decision is made by both and compared."""

    def __init__(self, client: PersistingRedis, start: int) -> None:
        self.clock = Clock(start)
        self.client = client
        self.redis = RedisStore(client, KEYSPACE)
        self.restart()

    def restart(self) -> None:
        """Start afresh on both stores: empty counters of a new tenant."""
        self.tenant = fresh_tenant()
        self.memory = MemoryStore(clock=self.clock)
        self.expiry: dict[str, int] = {}  # counter key -> when it expires, controlled clock

    async def decide(self, checks: Sequence[Check]) -> list[Outcome]:
        now = self.clock.now
        expired = [key for key, expiry in self.expiry.items() if expiry <= now]
        if expired:
            await self.client.delete(*expired)
            for key in expired:
                del self.expiry[key]
        python = await self.memory.decide(checks, now)
        lua = await self.redis.decide(checks, now)
        for check, outcome in zip(checks, python, strict=True):
            assert_sane(check, outcome)
        writes = [
            (counter_key(check), state_ttl_ms(check.algorithm, outcome, check.window_ms))
            for check, outcome in zip(checks, python, strict=True)
            if outcome.allowed and check.cost > 0
        ]
        earliest, latest = self.client.script_time
        try:
            self._compare(checks, now, lua, python, dict(writes))
        except AssertionError:
            # Redis 7.0's PEXPIRE reads the clock twice (the base time, then "already
            # expired?"): when the millisecond ticks in between, a 1 ms TTL deletes the key at
            # once.  Only a write with a TTL within the MULTI's duration can have been hit.
            if any(ttl <= latest - earliest for _, ttl in writes):
                raise RedisExpiryRace from None
            raise
        self.expiry.update((key, now + ttl) for key, ttl in writes)
        return python

    def _compare(
        self,
        checks: Sequence[Check],
        now: int,
        lua: list[Outcome],
        python: list[Outcome],
        ttls: dict[str, int],
    ) -> None:
        assert lua == python, (
            f"Lua and Python disagree at now_ms={now} on {list(checks)}:\n"
            f"  lua:    {lua}\n  python: {python}"
        )
        earliest, latest = self.client.script_time
        for key, expire_time in self.client.expire_times.items():
            if key in ttls and expire_time == -1 and key in self.expiry:
                # kept the key's expiry (SET ... KEEPTTL: a write in the window of the
                # stored state): the instant the stored state's write set, to the ms
                assert self.expiry[key] == now + ttls[key], (
                    f"{key}: written at {now} keeping an expiry at {self.expiry[key]}, "
                    f"expected {now + ttls[key]}"
                )
            elif key in ttls:  # exact whenever the script ran within one millisecond
                assert earliest <= expire_time - ttls[key] <= latest, (
                    f"{key}: the script set a TTL of {expire_time - earliest} ms (or down to "
                    f"{expire_time - latest} ms), expected {ttls[key]} ms"
                )
            else:  # not written now: persisted after an earlier write, or absent
                assert expire_time == (-1 if key in self.expiry else -2), (key, expire_time)

    async def probe_retry(self, check: Check, denied: Outcome) -> None:
        """With no other traffic, ``check`` is still denied 1 ms before ``retry_ms`` and
        allowed at it."""
        self.clock.now += denied.retry_ms - 1
        [before] = await self.decide([check])
        assert (before.allowed, before.reason, before.retry_ms) == (False, Reason.LIMIT, 1), (
            f"{check} denied with {denied}, then 1 ms before its retry: {before}"
        )
        self.clock.now += 1
        [after] = await self.decide([check])
        assert after.allowed, f"{check} denied with {denied}, then at its retry: {after}"


@dataclass(frozen=True)
class CounterSpec:
    """One counter of a sequence; two limits when its limit is changed between checks."""

    key: str
    algorithm: Algorithm
    window_ms: int
    limits: tuple[int, ...]


LIMITS = st.one_of(
    st.integers(1, 5),
    st.integers(6, 1000),
    st.sampled_from([10**6, 10**6 - 1, 999_983]),
    st.integers(1001, 10**6),
)
WINDOWS = st.one_of(
    st.sampled_from([1000, 2000, MINUTE, HOUR]),
    st.integers(1, 3600).map(lambda seconds: seconds * 1000),
)


@st.composite
def counter_specs(draw: st.DrawFn, algorithms: Sequence[Algorithm]) -> CounterSpec:
    return CounterSpec(
        key=draw(st.sampled_from(["a", "b", "c"])),
        algorithm=draw(st.sampled_from(algorithms)),
        window_ms=draw(WINDOWS),
        limits=tuple(draw(st.lists(LIMITS, min_size=1, max_size=2))),
    )


@st.composite
def start_times(draw: st.DrawFn, window_ms: int) -> int:
    """Any instant, or one on or next to a window boundary (never 0: "the store's clock")."""
    if draw(st.booleans()):
        return draw(st.integers(1, 4 * 10**12))
    boundary = draw(st.integers(1, 10**9)) * window_ms
    return boundary + draw(st.sampled_from([0, 1, -1, window_ms // 2]))


@st.composite
def advances(draw: st.DrawFn, now: int, counters: Sequence[CounterSpec]) -> int:
    """How far the clock moves before a step: not at all, a little, onto or next to a
    (later) window boundary of a counter, or anywhere up to a few windows."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return 0
    if kind == 1:
        return draw(st.integers(1, 50))
    if kind == 2:
        window = draw(st.sampled_from(counters)).window_ms
        boundary = (now // window + draw(st.integers(1, 3))) * window
        return max(0, boundary + draw(st.sampled_from([0, -1, 1])) - now)
    return draw(st.integers(0, 3 * max(counter.window_ms for counter in counters)))


def costs(limit: int) -> st.SearchStrategy[int]:
    edges = sorted({0, 1, limit - 1, limit, limit + 1, limit + 2} - {-1})
    return st.one_of(
        st.sampled_from(edges),
        st.integers(0, min(limit, 3)),
        st.integers(1, max(1, limit // 4)),
        st.integers(0, limit + 2),
    )


async def run_sequence(port: int, data: st.DataObject, algorithms: Sequence[Algorithm]) -> None:
    """Draws and decides a random sequence of batches.  What is drawn never depends on the
    decisions (Hypothesis replays choices), so a Redis expiry race can restart the stores
    without changing the rest of the example."""
    client = PersistingRedis(host="127.0.0.1", port=port)
    try:
        counters = data.draw(
            st.lists(counter_specs(algorithms), min_size=1, max_size=3), label="counters"
        )
        pair = StorePair(client, data.draw(start_times(counters[0].window_ms), label="start"))
        await pair.redis.load()
        for _ in range(data.draw(st.integers(1, 25), label="steps")):
            pair.clock.now += data.draw(advances(pair.clock.now, counters), label="advance")
            drawn: list[tuple[CounterSpec, int, int]] = []
            for _ in range(data.draw(st.integers(1, 3), label="batch size")):
                spec = data.draw(st.sampled_from(counters), label="counter")
                limit = data.draw(st.sampled_from(spec.limits), label="limit")
                drawn.append((spec, limit, data.draw(costs(limit), label="cost")))
            probe = data.draw(st.booleans(), label="probe a denial's retry")
            batch = [
                Check(pair.tenant, spec.key, spec.algorithm, limit, spec.window_ms, cost)
                for spec, limit, cost in drawn
            ]
            try:
                outcomes = await pair.decide(batch)
                # A denied check that no later check of its batch touched can be probed.
                probeable = [
                    (check, outcome)
                    for i, (check, outcome) in enumerate(zip(batch, outcomes, strict=True))
                    if outcome.reason is Reason.LIMIT
                    and all(counter_key(later) != counter_key(check) for later in batch[i + 1 :])
                ]
                if probe and probeable:
                    await pair.probe_retry(*probeable[0])
            except RedisExpiryRace:
                pair.restart()
    finally:
        await client.aclose()


PARITY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("algorithm", list(Algorithm))
@PARITY_SETTINGS
@given(data=st.data())
def test_lua_and_python_decide_alike(
    redis_server: RedisServer, algorithm: Algorithm, data: st.DataObject
) -> None:
    asyncio.run(run_sequence(redis_server.port, data, [algorithm]))


@pytest.mark.timeout(90)
@PARITY_SETTINGS
@given(data=st.data())
def test_lua_and_python_decide_alike_with_algorithms_interleaved(
    redis_server: RedisServer, data: st.DataObject
) -> None:
    asyncio.run(run_sequence(redis_server.port, data, list(Algorithm)))


# --- named edge cases, on both stores ---------------------------------------------------


@dataclass
class Subject:
    """One store under test, with its controlled clock and a way to block subjects."""

    kind: str
    store: MemoryStore | RedisStore
    clock: Clock
    tenant: str
    redis: Redis
    block_expiry: dict[tuple[str, str], int | None] = field(default_factory=dict)

    def at(self, offset_ms: int) -> None:
        self.clock.now = EPOCH + offset_ms

    def check(
        self,
        algorithm: Algorithm,
        limit: int,
        cost: int,
        *,
        key: str = "k",
        window_ms: int = MINUTE,
        ip: str | None = None,
        user_id: str | None = None,
    ) -> Check:
        return Check(self.tenant, key, algorithm, limit, window_ms, cost, ip, user_id)

    async def decide(self, *checks: Check) -> list[Outcome]:
        return await self.store.decide(checks, self.clock.now)

    async def one(self, check: Check) -> Outcome:
        [outcome] = await self.decide(check)
        return outcome

    async def block(self, scope: str, value: str, ttl_ms: int | None) -> None:
        if isinstance(self.store, MemoryStore):
            self.store.block(self.tenant, scope, value, ttl_ms)
        else:
            key = KEYSPACE.block(self.tenant, scope, value)
            await self.redis.set(key, "blk_test", px=ttl_ms)
        self.block_expiry[(scope, value)] = None if ttl_ms is None else self.clock.now + ttl_ms

    async def unblock(self, scope: str, value: str) -> None:
        if isinstance(self.store, MemoryStore):
            self.store.unblock(self.tenant, scope, value)
        else:
            await self.redis.delete(KEYSPACE.block(self.tenant, scope, value))
        del self.block_expiry[(scope, value)]

    async def block_ttl(self, scope: str, value: str) -> int:
        """The time the block has left: by the controlled clock in memory, by Redis's."""
        if isinstance(self.store, MemoryStore):
            expiry = self.block_expiry[(scope, value)]
            return NO_RETRY if expiry is None else expiry - self.clock.now
        ttl: int = await self.redis.pttl(KEYSPACE.block(self.tenant, scope, value))
        return ttl

    async def assert_blocked(self, outcome: Outcome, scope: str, value: str) -> None:
        """Blocked, with ``retry_ms`` the block's remaining TTL (exact in memory; in Redis,
        whose TTLs run in real time, within ``REDIS_TTL_SLACK_MS``)."""
        ttl = await self.block_ttl(scope, value)
        assert (outcome.allowed, outcome.remaining, outcome.reason) == (False, 0, Reason.BLOCKED)
        assert outcome.reset_ms == max(outcome.retry_ms, 0)
        if ttl == NO_RETRY or isinstance(self.store, MemoryStore):
            assert outcome.retry_ms == ttl
        else:  # PTTL was read after the decision
            assert 0 <= outcome.retry_ms - ttl <= REDIS_TTL_SLACK_MS, (outcome, ttl)


@pytest.fixture(params=["memory", "redis"])
async def subject(request: pytest.FixtureRequest, redis: Redis, tenant: str) -> Subject:
    clock = Clock(EPOCH)
    store: MemoryStore | RedisStore = (
        MemoryStore(clock=clock) if request.param == "memory" else RedisStore(redis, KEYSPACE)
    )
    return Subject(request.param, store, clock, tenant, redis)


def ok(remaining: int, reset_ms: int) -> Outcome:
    return Outcome(True, remaining, reset_ms, NO_RETRY, Reason.OK)


def limited(remaining: int, reset_ms: int, retry_ms: int) -> Outcome:
    return Outcome(False, remaining, reset_ms, retry_ms, Reason.LIMIT)


def too_costly(remaining: int, reset_ms: int) -> Outcome:
    return Outcome(False, remaining, reset_ms, NO_RETRY, Reason.COST_EXCEEDS_LIMIT)


# (offset from EPOCH, expected outcome) for the same cost-1 check of limit 1, window 1 min
LIMIT_ONE = {
    Algorithm.FIXED_WINDOW: [
        (10_000, ok(0, 50_000)),
        (10_000, limited(0, 50_000, 50_000)),
        (59_999, limited(0, 1, 1)),
        (60_000, ok(0, 60_000)),
    ],
    Algorithm.SLIDING_WINDOW: [
        (10_000, ok(0, 50_000)),
        # the count has to leave the window and then the weighted previous window
        (10_000, limited(0, 50_000, 110_000)),
        (119_999, limited(0, 1, 1)),
        (120_000, ok(0, 60_000)),
    ],
    Algorithm.TOKEN_BUCKET: [
        (10_000, ok(0, 60_000)),
        (10_000, limited(0, 60_000, 60_000)),
        (69_999, limited(0, 1, 1)),
        (70_000, ok(0, 60_000)),
    ],
}


@pytest.mark.parametrize("algorithm", list(Algorithm))
async def test_limit_one(subject: Subject, algorithm: Algorithm) -> None:
    for offset, expected in LIMIT_ONE[algorithm]:
        subject.at(offset)
        assert await subject.one(subject.check(algorithm, 1, 1)) == expected, offset


async def test_fixed_window_resets_exactly_at_the_boundary(subject: Subject) -> None:
    f = Algorithm.FIXED_WINDOW
    subject.at(5)
    assert await subject.one(subject.check(f, 3, 3)) == ok(0, 59_995)
    subject.at(59_999)
    assert await subject.one(subject.check(f, 3, 1)) == limited(0, 1, 1)
    assert await subject.one(subject.check(f, 3, 0)) == ok(0, 1)
    subject.at(60_000)  # = the reset_ms of every decision of the first window
    assert await subject.one(subject.check(f, 3, 0)) == ok(3, 60_000)
    assert await subject.one(subject.check(f, 3, 1)) == ok(2, 60_000)
    assert await subject.one(subject.check(f, 3, 3)) == limited(2, 60_000, 60_000)
    assert await subject.one(subject.check(f, 3, 2)) == ok(0, 60_000)


async def test_sliding_window_weighs_the_previous_window_at_boundaries(subject: Subject) -> None:
    s = Algorithm.SLIDING_WINDOW
    subject.at(30_000)
    assert await subject.one(subject.check(s, 10, 10)) == ok(0, 30_000)
    subject.at(59_999)
    assert await subject.one(subject.check(s, 10, 0)) == ok(0, 1)
    subject.at(60_000)  # the previous window weighs fully at the boundary
    assert await subject.one(subject.check(s, 10, 0)) == ok(0, 60_000)
    # 10 × (60_000 - e) ≤ 9 × 60_000 from e = 6_000 on
    assert await subject.one(subject.check(s, 10, 1)) == limited(0, 60_000, 6_000)
    subject.at(65_999)
    assert await subject.one(subject.check(s, 10, 1)) == limited(0, 54_001, 1)
    subject.at(66_000)
    assert await subject.one(subject.check(s, 10, 1)) == ok(0, 54_000)
    subject.at(90_000)  # 1 + 10 × ½
    assert await subject.one(subject.check(s, 10, 0)) == ok(4, 30_000)
    subject.at(119_999)  # 1 + 10 × 1/60_000
    assert await subject.one(subject.check(s, 10, 0)) == ok(8, 1)
    subject.at(120_000)  # the 10 have left; the 1 now weighs fully as the previous window
    assert await subject.one(subject.check(s, 10, 0)) == ok(9, 60_000)
    subject.at(180_000)
    assert await subject.one(subject.check(s, 10, 0)) == ok(10, 60_000)


# limit 5 at EPOCH + 10 s: cost 3 allowed, cost 3 denied, cost 2 allowed
COST_ABOVE_REMAINING = {
    Algorithm.FIXED_WINDOW: [ok(2, 50_000), limited(2, 50_000, 50_000), ok(0, 50_000)],
    # 3 × (60_000 - e) + 3 × 60_000 ≤ 5 × 60_000 from 20 s into the next window
    Algorithm.SLIDING_WINDOW: [ok(2, 50_000), limited(2, 50_000, 70_000), ok(0, 50_000)],
    Algorithm.TOKEN_BUCKET: [ok(2, 36_000), limited(2, 36_000, 12_000), ok(0, 60_000)],
}


@pytest.mark.parametrize("algorithm", list(Algorithm))
async def test_cost_above_remaining_is_denied_and_uses_nothing(
    subject: Subject, algorithm: Algorithm
) -> None:
    subject.at(10_000)
    outcomes = [await subject.one(subject.check(algorithm, 5, cost)) for cost in (3, 3, 2)]
    assert outcomes == COST_ABOVE_REMAINING[algorithm]


@pytest.mark.parametrize("algorithm", list(Algorithm))
async def test_cost_above_limit_is_refused_for_good_and_uses_nothing(
    subject: Subject, algorithm: Algorithm
) -> None:
    subject.at(10_000)
    bucket = algorithm is Algorithm.TOKEN_BUCKET
    reset = 50_000 if not bucket else 0
    assert await subject.one(subject.check(algorithm, 5, 6)) == too_costly(5, reset)
    assert await subject.one(subject.check(algorithm, 5, 1)) == ok(4, 12_000 if bucket else reset)
    reset = 12_000 if bucket else reset
    assert await subject.one(subject.check(algorithm, 5, 7)) == too_costly(4, reset)
    assert await subject.one(subject.check(algorithm, 5, 10**6)) == too_costly(4, reset)
    assert await subject.one(subject.check(algorithm, 5, 4)) == ok(0, 60_000 if bucket else reset)


async def test_token_bucket_is_full_exactly_at_reset(subject: Subject) -> None:
    t = Algorithm.TOKEN_BUCKET
    subject.at(10_000)
    assert await subject.one(subject.check(t, 4, 4)) == ok(0, 60_000)
    subject.at(25_000)  # one token per 15 s
    assert await subject.one(subject.check(t, 4, 0)) == ok(1, 45_000)
    subject.at(69_999)
    assert await subject.one(subject.check(t, 4, 0)) == ok(3, 1)
    assert await subject.one(subject.check(t, 4, 4)) == limited(3, 1, 1)
    subject.at(70_000)
    assert await subject.one(subject.check(t, 4, 0)) == ok(4, 0)
    assert await subject.one(subject.check(t, 4, 1)) == ok(3, 15_000)
    assert await subject.one(subject.check(t, 4, 3)) == ok(0, 60_000)


async def test_fixed_window_counts_afresh_at_its_reset(subject: Subject) -> None:
    f = Algorithm.FIXED_WINDOW
    subject.at(1_000)
    first = await subject.one(subject.check(f, 2, 2))
    assert first == ok(0, 59_000)
    subject.at(1_000 + first.reset_ms)
    assert await subject.one(subject.check(f, 2, 0)) == ok(2, 60_000)


async def test_a_batch_is_decided_in_order(subject: Subject) -> None:
    f = Algorithm.FIXED_WINDOW
    subject.at(10_000)
    other = subject.check(f, 5, 4, key="k2")._replace(tenant=subject.tenant + "x")
    outcomes = await subject.decide(
        subject.check(f, 5, 3), other, subject.check(f, 5, 3), subject.check(f, 5, 2), other
    )
    assert outcomes == [
        ok(2, 50_000),
        ok(1, 50_000),
        limited(2, 50_000, 50_000),
        ok(0, 50_000),
        limited(1, 50_000, 50_000),
    ]


@pytest.mark.parametrize("algorithm", list(Algorithm))
async def test_a_blocked_key_is_denied_for_the_blocks_remaining_ttl(
    subject: Subject, algorithm: Algorithm
) -> None:
    subject.at(10_000)
    await subject.block("key", "k", 30_000)
    subject.at(20_000)
    outcome = await subject.one(subject.check(algorithm, 5, 1))
    await subject.assert_blocked(outcome, "key", "k")
    if subject.kind == "memory":
        assert outcome.retry_ms == 20_000


async def test_the_longest_block_of_a_checks_subjects_wins(subject: Subject) -> None:
    await subject.block("key", "k", 5_000)
    await subject.block("ip", "192.0.2.7", 10_000)
    await subject.block("user_id", "u1", 20_000)
    check = subject.check(Algorithm.SLIDING_WINDOW, 5, 1, ip="192.0.2.7", user_id="u1")
    await subject.assert_blocked(await subject.one(check), "user_id", "u1")
    ip_only = check._replace(user_id=None)
    await subject.assert_blocked(await subject.one(ip_only), "ip", "192.0.2.7")


async def test_a_block_without_ttl_wins_with_no_retry(subject: Subject) -> None:
    await subject.block("ip", "192.0.2.7", 10_000)
    await subject.block("user_id", "u1", None)
    check = subject.check(Algorithm.TOKEN_BUCKET, 5, 1, ip="192.0.2.7", user_id="u1")
    outcome = await subject.one(check)
    assert outcome == Outcome(False, 0, 0, NO_RETRY, Reason.BLOCKED)
    await subject.assert_blocked(outcome, "user_id", "u1")


async def test_a_block_stops_only_its_own_subject(subject: Subject) -> None:
    await subject.block("ip", "192.0.2.7", 30_000)
    await subject.block("key", "k", 30_000)
    f = Algorithm.FIXED_WINDOW
    unblocked = [
        subject.check(f, 5, 1, key="k2"),  # another key
        subject.check(f, 5, 1, key="k2", ip="192.0.2.8"),  # another ip
        subject.check(f, 5, 1, key="192.0.2.7"),  # the ip's value as a key
        subject.check(f, 5, 1)._replace(tenant=subject.tenant + "x"),  # another tenant
    ]
    for check in unblocked:
        assert (await subject.one(check)).reason is Reason.OK, check
    blocked = await subject.one(subject.check(f, 5, 1, key="k2", ip="192.0.2.7"))
    await subject.assert_blocked(blocked, "ip", "192.0.2.7")


@pytest.mark.parametrize("algorithm", list(Algorithm))
async def test_a_blocked_check_uses_nothing(subject: Subject, algorithm: Algorithm) -> None:
    subject.at(10_000)
    await subject.block("user_id", "u1", 30_000)
    check = subject.check(algorithm, 2, 1, user_id="u1")
    for cost in (1, 1, 1, 3):  # the block comes before the cost check too
        await subject.assert_blocked(await subject.one(check._replace(cost=cost)), "user_id", "u1")
    await subject.unblock("user_id", "u1")
    assert (await subject.one(check._replace(cost=2))).remaining == 0
    assert (await subject.one(check)).reason is Reason.LIMIT


async def test_memory_block_ends_exactly_at_its_expiry() -> None:
    """Redis ends a block in real time, which a test cannot move without waiting."""
    clock = Clock(EPOCH)
    store = MemoryStore(clock=clock)
    store.block("t", "key", "k", 30_000)
    check = Check("t", "k", Algorithm.FIXED_WINDOW, 5, MINUTE, 1)
    clock.now = EPOCH + 29_999
    assert store.decide_one(check, clock.now) == Outcome(False, 0, 1, 1, Reason.BLOCKED)
    clock.now = EPOCH + 30_000
    assert store.decide_one(check, clock.now) == ok(4, 30_000)


# --- concurrency -------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("algorithm", "now_ms"),
    [
        (Algorithm.FIXED_WINDOW, EPOCH + 1),
        (Algorithm.SLIDING_WINDOW, EPOCH + 1),
        (Algorithm.TOKEN_BUCKET, EPOCH + 1),
        # Redis's own clock: a 1 h window cannot let a 101st check in within 36 s
        (Algorithm.SLIDING_WINDOW, 0),
        (Algorithm.TOKEN_BUCKET, 0),
    ],
)
async def test_two_stores_with_coalescers_allow_exactly_the_limit_concurrently(
    redis_server: RedisServer, tenant: str, algorithm: Algorithm, now_ms: int
) -> None:
    clients = [Redis.from_url(redis_server.url) for _ in range(2)]
    calls = 0

    def decider(store: RedisStore) -> Decide:
        async def decide(checks: Sequence[Check]) -> list[Outcome]:
            nonlocal calls
            calls += 1
            return await store.decide(checks, now_ms)

        return decide

    try:
        coalescers = [
            Coalescer(decider(RedisStore(client, KEYSPACE)), max_batch=37) for client in clients
        ]
        check = Check(tenant, "hot", algorithm, 100, HOUR, 1)

        async def one(i: int) -> Outcome:
            [outcome] = await coalescers[i % 2].submit([check])
            return outcome

        outcomes = await asyncio.gather(*(one(i) for i in range(1000)))
    finally:
        for client in clients:
            await client.aclose()

    allowed = [outcome for outcome in outcomes if outcome.allowed]
    assert len(allowed) == 100
    assert sorted(outcome.remaining for outcome in allowed) == list(range(100))
    assert all(
        (outcome.reason, outcome.remaining) == (Reason.LIMIT, 0)
        for outcome in outcomes
        if not outcome.allowed
    )
    assert 1000 // 37 <= calls < 1000  # the checks were coalesced, into several batches
