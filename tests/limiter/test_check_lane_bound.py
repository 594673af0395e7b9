"""The check lane's bound on decoded checks (limiter/http/lane.py): a flood of batches is
held as it came and decoded as answers make room, every request answered and decided in
the order it came.  The lane here decides through the real check path: the coalescer, the
Redis store and the session's Redis."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Sequence

import pytest

from limiter.algorithms import Algorithm, Outcome
from limiter.auth import Principal
from limiter.coalescer import Coalescer
from limiter.emit import NullSink
from limiter.http.asgi import Headers
from limiter.http.checks import CheckHandler
from limiter.http.lane import BATCH_PATH, CHECK_PATH, CheckLane
from limiter.http.problems import Problem
from limiter.keyspace import Keyspace
from limiter.metrics import LimiterMetrics
from limiter.redis_client import redis_from_url
from limiter.state.tenants import FailMode
from limiter.store.base import Check
from limiter.store.redis import RedisStore
from tests.support.polling import until
from tests.support.servers import RedisServer

pytestmark = pytest.mark.timeout(60)

LIMIT = 40


class Answer:
    """A request the lane answers, as the HTTP protocol's cycle would write it."""

    path = "/v1/batch"

    def __init__(self) -> None:
        self.status = 0
        self.body = b""

    def respond(self, status: int, headers: Headers, body: bytes) -> None:
        assert self.status == 0, "answered twice"
        self.status, self.body = status, body


class Holding:
    """The decider, counting the checks handed to it and not yet answered."""

    def __init__(self, coalescer: Coalescer) -> None:
        self._coalescer = coalescer
        self.held = 0
        self.most_held = 0
        self.keys_in_order: list[str] = []
        self.calls: list[int] = []  # checks per call
        self.gate: asyncio.Event | None = None  # while set and not open, calls wait at it

    async def decide(self, checks: Sequence[Check], fail_mode: FailMode) -> list[Outcome]:
        self.held += len(checks)
        self.calls.append(len(checks))
        self.most_held = max(self.most_held, self.held)
        self.keys_in_order += [check.key for check in checks]
        try:
            if self.gate is not None:
                await self.gate.wait()
            return await self._coalescer.submit(checks)
        finally:
            self.held -= len(checks)


def problem_of(exc: Exception) -> Problem:
    return exc if isinstance(exc, Problem) else Problem(500, "internal", repr(exc))


@pytest.fixture
async def decider(redis_server: RedisServer) -> AsyncIterator[Holding]:
    client = redis_from_url(redis_server.url, timeout=5.0)
    store = RedisStore(client, Keyspace("lane-" + secrets.token_hex(4)))
    await store.load()
    yield Holding(Coalescer(store.decide))
    await client.aclose(close_connection_pool=True)


def lane_of(decider: Holding, max_checks: int, group_checks: int) -> CheckLane:
    handler = CheckHandler(
        None,  # type: ignore[arg-type]  # the lane is handed principals, never keys
        decider,
        NullSink(),
        LimiterMetrics(),
        Algorithm.SLIDING_WINDOW,
        64 * 1024,
        1024 * 1024,
    )
    return CheckLane(
        handler,
        decider,
        None,  # type: ignore[arg-type]
        problem_of,
        64 * 1024,
        1024 * 1024,
        max_checks=max_checks,
        group_checks=group_checks,
    )


def batch(*keys: str) -> bytes:
    return json.dumps({"checks": [{"key": k, "limit": LIMIT, "window": 60} for k in keys]}).encode()


PRINCIPAL = Principal("lane-tenant", "key-1", False, FailMode.OPEN)


async def test_a_flood_of_batches_waits_undecoded_beyond_the_bound_and_is_answered_in_order(
    decider: Holding,
) -> None:
    lane = lane_of(decider, max_checks=10, group_checks=4)
    # the first calls wait until the lane's state is read: Redis may answer them sooner
    decider.gate = asyncio.Event()
    answers = [Answer() for _ in range(30)]
    for index, answer in enumerate(answers):  # every request checks the same three keys
        lane.submit(BATCH_PATH, PRINCIPAL, batch("a", "b", "c"), index, answer)
    await until(lambda: decider.held == 12, "the first requests decoded")
    # admitted while fewer than 10 checks are held: four requests of three
    assert lane.checks_held == 12
    assert lane.waiting == 26
    decider.gate.set()
    await until(lambda: all(a.status for a in answers), "every request answered", within=20)
    assert lane.checks_held == 0
    assert lane.waiting == 0
    assert 9 <= decider.most_held <= 12  # the room was used, and never more than the bound
    statuses = {a.status for a in answers}
    assert statuses == {200}, [a.body for a in answers if a.status != 200][:1]
    results = [json.loads(a.body)["results"] for a in answers]
    # decided in the order the requests came: each key's remaining counts down by one
    for position, key in enumerate("abc"):
        remaining = [result[position]["remaining"] for result in results]
        allowed = [result[position]["allowed"] for result in results]
        assert remaining[:LIMIT] == list(range(LIMIT - 1, LIMIT - 31, -1)), key
        assert allowed == [True] * 30, key
    assert decider.keys_in_order == ["a", "b", "c"] * 30
    assert set(decider.calls) == {3}  # a group of four checks takes one request of three


async def test_checks_and_batches_share_the_bound_and_a_decider_call_holds_one_group(
    decider: Holding,
) -> None:
    lane = lane_of(decider, max_checks=8, group_checks=5)
    answers = []
    for index in range(12):
        answer = Answer()
        answers.append(answer)
        if index % 2:
            lane.submit(BATCH_PATH, PRINCIPAL, batch(f"s{index}", f"t{index}"), index, answer)
        else:
            body = json.dumps({"key": f"single{index}", "limit": LIMIT, "window": 60}).encode()
            lane.submit(CHECK_PATH, PRINCIPAL, body, index, answer)
    await until(lambda: all(a.status for a in answers), "every request answered", within=20)
    assert {a.status for a in answers} == {200}, answers[0].body
    assert decider.most_held <= 8 - 1 + 2  # below the bound, plus the last request let in
    assert max(decider.calls) <= 5
    assert sum(decider.calls) == 6 + 6 * 2
    for index, answer in enumerate(answers):
        body = json.loads(answer.body)
        if index % 2:
            assert [r["remaining"] for r in body["results"]] == [LIMIT - 1, LIMIT - 1]
        else:
            assert body["remaining"] == LIMIT - 1


def test_a_group_larger_than_the_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="group_checks must be within 1-8"):
        lane_of(Holding(None), max_checks=8, group_checks=9)  # type: ignore[arg-type]
