"""The failure policy: the store while it answers, the tenant's fail mode while it does not,
and the store again once the health probe sees it answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from limiter.algorithms import Algorithm, Outcome, Reason
from limiter.coalescer import Coalescer
from limiter.errors import StoreUnavailable
from limiter.failover import FAIL_CLOSED_RETRY_MS, FailoverDecider, StoreHealth
from limiter.keyspace import Keyspace
from limiter.metrics import LimiterMetrics
from limiter.redis_client import redis_from_url
from limiter.state.tenants import FailMode
from limiter.store.base import Check
from limiter.store.memory import MemoryStore
from limiter.store.redis import RedisStore
from tests.support.polling import turns, until
from tests.support.servers import RedisServer

pytestmark = pytest.mark.timeout(30)


class FlakyStore:
    """A MemoryStore that, on demand, fails or hangs as an unreachable or frozen Redis does."""

    def __init__(self) -> None:
        self.memory = MemoryStore()
        self.down = False
        self.frozen = False
        self.calls_fail = False  # calls fail while pings answer: a slow or bad call
        self.ping_frozen = False
        self.calls = 0
        self.pings = 0

    async def decide(self, checks: Sequence[Check]) -> list[Outcome]:
        self.calls += 1
        if self.frozen:
            await asyncio.Event().wait()
        if self.down:
            raise StoreUnavailable("Redis did not answer: connection refused")
        if self.calls_fail:
            raise StoreUnavailable("Redis did not answer: TimeoutError()")
        return await self.memory.decide(checks)

    async def ping(self) -> bool:
        self.pings += 1
        if self.ping_frozen:
            await asyncio.Event().wait()
        if self.down:
            raise StoreUnavailable("Redis did not answer: connection refused")
        return True


def sample(metrics: LimiterMetrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def check(key: str, limit: int = 100, tenant: str = "t1") -> Check:
    return Check(tenant, key, Algorithm.SLIDING_WINDOW, limit, 60_000, 1)


class Setup:
    def __init__(self, probe_interval: float = 0.001, failures_to_down: int = 3) -> None:
        self.store = FlakyStore()
        self.fallback = MemoryStore()
        self.metrics = LimiterMetrics()
        self.health = StoreHealth(
            self.store.ping,
            self.metrics,
            probe_interval=probe_interval,
            probe_timeout=0.05,
            failures_to_down=failures_to_down,
        )
        self.decider = FailoverDecider(
            Coalescer(self.health.guard(self.store.decide)), self.fallback, self.health
        )

    async def decide(
        self, checks: Sequence[Check], mode: FailMode = FailMode.OPEN
    ) -> list[Outcome]:
        return await self.decider.decide(checks, mode)


@pytest.fixture
async def watched() -> AsyncIterator[Setup]:
    """A decider whose store health is probed in the background, as the server does."""
    setup = Setup()
    watcher = asyncio.create_task(setup.health.watch())
    yield setup
    await stop(watcher)


@pytest.fixture
async def setup(watched: Setup) -> Setup:
    return watched


# StoreHealth


async def test_health_starts_up() -> None:
    metrics = LimiterMetrics()
    health = StoreHealth(FlakyStore().ping, metrics)
    assert (health.up, health.down_since, health.last_error) == (True, None, None)
    assert sample(metrics, "ratewatch_redis_up") == 1
    assert sample(metrics, "ratewatch_redis_errors_total") == 0


async def test_mark_down_records_the_outage_and_counts_every_error() -> None:
    metrics = LimiterMetrics()
    health = StoreHealth(FlakyStore().ping, metrics)
    before = time.time()
    health.mark_down(StoreUnavailable("Redis did not answer: first"))
    assert not health.up
    assert health.down_since is not None
    assert before <= health.down_since <= time.time()
    assert health.last_error == "Redis did not answer: first"
    assert sample(metrics, "ratewatch_redis_up") == 0
    assert sample(metrics, "ratewatch_redis_errors_total") == 1

    down_since = health.down_since
    health.mark_down(StoreUnavailable("Redis did not answer: second"))
    assert health.down_since == down_since  # still the same outage
    assert health.last_error == "Redis did not answer: second"
    assert sample(metrics, "ratewatch_redis_errors_total") == 2


async def test_the_probe_runs_only_while_down_and_marks_the_store_up_when_it_answers() -> None:
    store = FlakyStore()
    metrics = LimiterMetrics()
    health = StoreHealth(store.ping, metrics, probe_interval=0)
    watcher = asyncio.create_task(health.watch())
    try:
        await turns()
        assert store.pings == 0  # an answering store is not probed

        store.down = True
        health.mark_down(StoreUnavailable("Redis did not answer: gone"))
        await until(lambda: store.pings >= 3, "the probe to retry")
        assert not health.up
        assert health.last_error == "Redis did not answer: connection refused"
        assert sample(metrics, "ratewatch_redis_up") == 0

        store.down = False
        await until(lambda: health.up, "the probe to see the store answer")
        assert health.down_since is None
        assert sample(metrics, "ratewatch_redis_up") == 1
        pings = store.pings
        await turns()
        assert store.pings == pings
    finally:
        await stop(watcher)


async def test_a_failed_call_does_not_mark_an_answering_store_down(setup: Setup) -> None:
    setup.store.calls_fail = True
    [failed] = await setup.decide([check("a")])
    assert (failed.allowed, failed.reason) == (True, Reason.FAIL_OPEN)
    # the call's failure made the watcher probe at once; the store answered it
    await until(lambda: setup.store.pings >= 1, "the probe after the failed call")
    await turns()
    assert setup.health.up
    assert setup.health.down_since is None
    assert sample(setup.metrics, "ratewatch_redis_up") == 1
    assert sample(setup.metrics, "ratewatch_redis_errors_total") == 1
    setup.store.calls_fail = False
    [answered] = await setup.decide([check("a")])
    assert answered.reason is Reason.OK
    assert setup.health.failures == 0


async def test_failed_calls_in_a_row_mark_the_store_down_until_a_probe_answers() -> None:
    setup = Setup(failures_to_down=3)
    setup.store.calls_fail = True
    for _ in range(2):
        await setup.decide([check("a")])
        assert setup.health.up
    await setup.decide([check("a")])
    assert not setup.health.up  # three failed calls in a row, however the probe answers
    assert setup.health.last_error == "Redis did not answer: TimeoutError()"
    assert await setup.health.probe()  # the store answers: back up
    assert setup.health.up
    assert setup.health.failures == 0


async def test_failed_calls_keep_the_store_down_for_a_probe_interval() -> None:
    setup = Setup(probe_interval=0.3, failures_to_down=2)
    watcher = asyncio.create_task(setup.health.watch())
    try:
        setup.store.calls_fail = True
        await setup.decide([check("a")])
        await until(lambda: setup.store.pings == 1, "the probe after the first failure")
        await setup.decide([check("a")])
        assert not setup.health.up
        down = time.monotonic()
        await turns()
        assert setup.store.pings == 1  # not probed back up at once
        await until(lambda: setup.health.up, "the probe an interval later")
        assert time.monotonic() - down >= 0.25
    finally:
        await stop(watcher)


async def test_an_answered_call_between_failures_resets_their_count() -> None:
    setup = Setup(failures_to_down=2)
    for _ in range(5):
        setup.store.calls_fail = True
        await setup.decide([check("a")])
        setup.store.calls_fail = False
        await setup.decide([check("b")])
    assert setup.health.up
    assert sample(setup.metrics, "ratewatch_redis_errors_total") == 5


async def test_a_probe_unanswered_within_its_timeout_marks_the_store_down(setup: Setup) -> None:
    setup.store.ping_frozen = True
    setup.store.frozen = True  # calls hang too, as on a frozen server: only the probe decides
    setup.health.call_failed(StoreUnavailable("Redis did not answer: TimeoutError()"))
    await until(lambda: not setup.health.up, "the probe's timeout")
    assert sample(setup.metrics, "ratewatch_redis_up") == 0
    setup.store.ping_frozen = setup.store.frozen = False
    await until(lambda: setup.health.up, "the probe to see the store answer")


async def test_the_watcher_stops_when_cancelled_whenever_the_cancel_lands() -> None:
    store = FlakyStore()
    store.down = True
    health = StoreHealth(store.ping, LimiterMetrics(), probe_interval=0)
    health.mark_down(StoreUnavailable("Redis did not answer: gone"))
    # probing back to back: a cancellation often lands as a probe returns
    for attempt in range(300):
        watcher = asyncio.create_task(health.watch())
        for _ in range(attempt % 7):
            await asyncio.sleep(0)  # the cancel lands after a different number of turns each time
        watcher.cancel()
        done, _ = await asyncio.wait([watcher], timeout=1)
        assert done, f"the watcher ignored its cancellation (attempt {attempt})"


# FailoverDecider


async def test_while_the_store_answers_decisions_come_from_it(setup: Setup) -> None:
    outcomes = [(await setup.decide([check("a", limit=2)]))[0] for _ in range(3)]
    assert [(o.allowed, o.reason) for o in outcomes] == [
        (True, Reason.OK),
        (True, Reason.OK),
        (False, Reason.LIMIT),
    ]
    assert setup.store.calls == 3
    assert setup.health.up
    # the local store saw none of it: it would still allow the first of two
    assert setup.fallback.decide_one(check("a", limit=2)).remaining == 1


async def test_closed_tenants_are_answered_by_the_store_while_it_answers(setup: Setup) -> None:
    [outcome] = await setup.decide([check("a")], FailMode.CLOSED)
    assert (outcome.allowed, outcome.reason, outcome.remaining) == (True, Reason.OK, 99)


async def test_a_store_failure_is_answered_by_the_policy_and_marks_the_store_down(
    setup: Setup,
) -> None:
    setup.store.down = True
    [outcome] = await setup.decide([check("a")])
    assert (outcome.allowed, outcome.reason, outcome.remaining) == (True, Reason.FAIL_OPEN, 99)
    await until(lambda: not setup.health.up, "the probe to mark the store down")
    assert setup.health.last_error == "Redis did not answer: connection refused"
    assert sample(setup.metrics, "ratewatch_redis_up") == 0
    assert sample(setup.metrics, "ratewatch_redis_errors_total") == 1


async def test_open_tenants_are_limited_by_the_local_store_while_the_store_is_down(
    setup: Setup,
) -> None:
    setup.store.down = True
    outcomes = await setup.decide([check("small", limit=3) for _ in range(5)])
    assert [(o.allowed, o.reason) for o in outcomes] == [
        (True, Reason.FAIL_OPEN),
        (True, Reason.FAIL_OPEN),
        (True, Reason.FAIL_OPEN),
        (False, Reason.LIMIT),
        (False, Reason.LIMIT),
    ]
    assert [o.remaining for o in outcomes[:3]] == [2, 1, 0]
    assert all(o.retry_ms > 0 for o in outcomes[3:])
    [again] = await setup.decide([check("small", limit=3)])
    assert (again.allowed, again.reason) == (False, Reason.LIMIT)


async def test_blocks_in_the_local_store_still_deny_while_the_store_is_down(setup: Setup) -> None:
    setup.fallback.block("t1", "key", "bad", 60_000)
    setup.store.down = True
    good, bad = await setup.decide([check("good"), check("bad")])
    assert (good.allowed, good.reason) == (True, Reason.FAIL_OPEN)
    assert (bad.allowed, bad.reason) == (False, Reason.BLOCKED)


async def test_closed_tenants_are_denied_while_the_store_is_down(setup: Setup) -> None:
    setup.store.down = True
    outcomes = await setup.decide([check("a"), check("b")], FailMode.CLOSED)
    denial = Outcome(False, 0, FAIL_CLOSED_RETRY_MS, FAIL_CLOSED_RETRY_MS, Reason.FAIL_CLOSED)
    assert outcomes == [denial, denial]
    await until(lambda: not setup.health.up, "the probe to mark the store down")
    # and an open tenant at the same time is still decided locally
    [opened] = await setup.decide([check("a")], FailMode.OPEN)
    assert (opened.allowed, opened.reason) == (True, Reason.FAIL_OPEN)


async def test_concurrent_requests_of_a_failed_call_all_get_the_policys_answer(
    setup: Setup,
) -> None:
    setup.store.down = True
    modes = [FailMode.OPEN, FailMode.CLOSED] * 5
    answers = await asyncio.gather(
        *(setup.decide([check(f"k{i}")], mode) for i, mode in enumerate(modes))
    )
    assert setup.store.calls == 1  # coalesced into one call, which failed
    assert [answer[0].reason for answer in answers] == [Reason.FAIL_OPEN, Reason.FAIL_CLOSED] * 5
    await until(lambda: not setup.health.up, "the probe to mark the store down")
    # one failed call is one Redis error, however many requests waited on it
    assert sample(setup.metrics, "ratewatch_redis_errors_total") == 1


async def test_no_request_waits_on_the_down_store(setup: Setup) -> None:
    setup.store.down = True
    await setup.decide([check("first")])
    await until(lambda: not setup.health.up, "the probe to mark the store down")
    setup.store.frozen = True  # a request that reached the store now would never return
    calls = setup.store.calls
    answers = await asyncio.wait_for(
        asyncio.gather(*(setup.decide([check(f"k{i}")], FailMode.OPEN) for i in range(50))),
        timeout=5,
    )
    assert {answer[0].reason for answer in answers} == {Reason.FAIL_OPEN}
    assert setup.store.calls == calls


async def test_decisions_go_back_to_the_store_once_the_probe_sees_it_answer(
    watched: Setup,
) -> None:
    watched.store.down = True
    [during] = await watched.decide([check("a", limit=5)])
    assert during.reason is Reason.FAIL_OPEN
    await until(lambda: watched.store.pings >= 2, "the probe to try the down store")
    assert not watched.health.up

    watched.store.down = False
    await until(lambda: watched.health.up, "the probe to see the store answer")
    calls = watched.store.calls
    [after] = await watched.decide([check("a", limit=5)])
    assert (after.allowed, after.reason) == (True, Reason.OK)
    # the store's own count: the outage's local decision is not in it
    assert after.remaining == 4
    assert watched.store.calls == calls + 1
    assert sample(watched.metrics, "ratewatch_redis_up") == 1


# the same policy over a real Redis that crashes and comes back


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


async def test_a_crashed_redis_is_replaced_by_the_policy_until_it_answers_again(
    own_redis: RedisServer,
) -> None:
    client = redis_from_url(own_redis.url, timeout=1.0)
    metrics = LimiterMetrics()
    health = StoreHealth(client.ping, metrics, probe_interval=0.01)
    store = RedisStore(client, Keyspace("failover-unit"))
    decider = FailoverDecider(Coalescer(health.guard(store.decide)), MemoryStore(), health)
    watcher = asyncio.create_task(health.watch())
    try:
        [before] = await decider.decide([check("a", limit=10)], FailMode.OPEN)
        assert (before.reason, before.remaining) == (Reason.OK, 9)

        own_redis.kill()
        [opened] = await decider.decide([check("a", limit=10)], FailMode.OPEN)
        [closed] = await decider.decide([check("a", limit=10)], FailMode.CLOSED)
        assert (opened.allowed, opened.reason) == (True, Reason.FAIL_OPEN)
        assert (closed.allowed, closed.reason) == (False, Reason.FAIL_CLOSED)
        await until(lambda: not health.up, "the probe to mark Redis down")
        assert health.last_error is not None
        assert sample(metrics, "ratewatch_redis_up") == 0

        own_redis.start()  # the same port, an empty server
        await until(lambda: health.up, "the probe to see Redis again")
        [after] = await decider.decide([check("a", limit=10)], FailMode.CLOSED)
        assert (after.allowed, after.reason, after.remaining) == (True, Reason.OK, 9)
    finally:
        await stop(watcher)
        await client.aclose(close_connection_pool=True)  # the client does not own its pool
