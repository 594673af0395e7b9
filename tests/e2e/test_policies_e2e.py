"""Policies across limiter instances: two real `ratewatch serve` on a Redis of the test's
own (sharing their durable copy, as one deployment), a change made on one in force on the
other within a second, shadow mode's events, and policies back after Redis lost its data."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from stream.events import decode_entry
from stream.handlers import entry_record
from tests.support.credentials import BOOTSTRAP_KEY
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, RedisServer, start_limiter

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def redis_alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-policies")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def instances(
    redis_alone: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RatewatchProcess, RatewatchProcess]]:
    """Two limiters on one Redis and one data dir; the second streams its decisions into
    Redis (``rw:events``), where the test reads them."""
    workdir = tmp_path_factory.mktemp("policies")
    env = {"RATEWATCH_BOOTSTRAP_KEY": BOOTSTRAP_KEY}
    first = start_limiter(redis_alone.url, workdir, env=env)
    try:
        second = start_limiter(
            redis_alone.url,
            workdir / "second",
            "--data-dir",
            str(workdir / "data"),
            "--redis-events",
            env=env,
        )
    except BaseException:
        first.stop()
        raise
    yield first, second
    second.stop()
    first.stop()


def _api(process: RatewatchProcess) -> httpx.Client:
    return httpx.Client(
        base_url=process.base_url, timeout=10, headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
    )


def _limit(api: httpx.Client, key: str, policy: str) -> int:
    answer = api.post("/v1/check", json={"key": key, "policy": policy})
    assert answer.status_code == 200, answer.text
    limit: int = answer.json()["limit"]
    return limit


def _limit_or_none(api: httpx.Client, key: str, policy: str) -> int | None:
    answer = api.post("/v1/check", json={"key": key, "policy": policy})
    return answer.json()["limit"] if answer.status_code == 200 else None


def test_a_change_on_one_instance_is_in_force_on_the_other_within_a_second(
    instances: tuple[RatewatchProcess, RatewatchProcess],
) -> None:
    first, second = instances
    with _api(first) as a, _api(second) as b:
        created = a.put("/v1/policies/spread", json={"limits": [{"limit": 5, "window": 60}]})
        assert created.status_code == 201, created.text
        # the other instance never held it: it looks it up at once
        assert _limit(b, "k0", "spread") == 5
        changed = a.put("/v1/policies/spread", json={"limits": [{"limit": 7, "window": 60}]})
        assert changed.status_code == 200
        changed_at = time.monotonic()
        turn = iter(range(1, 10_000))
        wait_until(lambda: _limit(b, f"k{next(turn)}", "spread") == 7, 1.0, "the new limit on b")
        print(f"in force on the other instance after {time.monotonic() - changed_at:.3f}s")
        assert a.delete("/v1/policies/spread").status_code == 200
        wait_until(
            lambda: b.post("/v1/check", json={"key": "k", "policy": "spread"}).status_code == 422,
            1.0,
            "the deletion on b",
        )


def test_shadow_mode_answers_allowed_and_the_event_keeps_the_would_be_denial(
    instances: tuple[RatewatchProcess, RatewatchProcess], redis_alone: RedisServer
) -> None:
    _, second = instances
    with _api(second) as b, redis.Redis.from_url(redis_alone.url) as plain:
        body = {
            "limits": [{"limit": 1, "window": 60}, {"limit": 50, "window": 3600}],
            "mode": "shadow",
        }
        assert b.put("/v1/policies/trial", json=body).status_code == 201
        start = plain.xrevrange("rw:events", count=1)
        after = start[0][0] if start else b"0-0"
        answers = [b.post("/v1/check", json={"key": "s1", "policy": "trial"}) for _ in range(3)]
        assert [a.json()["allowed"] for a in answers] == [True, True, True]
        assert answers[2].json()["reason"] == "ok"
        assert answers[2].json()["remaining"] == 0
        assert "retry-after" not in answers[2].headers
        entries = plain.xrange("rw:events", min=f"({after.decode()}")
        events = [e for i, f in entries for e in decode_entry(entry_record(i, f)) if e.key == "s1"]
        assert [(e.allowed, e.reason) for e in events] == [
            (True, "ok"), (False, "limit"), (False, "limit")]  # fmt: skip
        assert {(e.policy, e.shadow, e.limit, e.window) for e in events} == {("trial", True, 1, 60)}
        metrics = httpx.get(second.base_url + "/metrics", timeout=10).text
        assert 'ratewatch_policy_shadow_denials_total{reason="limit"}' in metrics


def test_policies_and_overrides_come_back_after_redis_lost_its_data(
    instances: tuple[RatewatchProcess, RatewatchProcess], redis_alone: RedisServer
) -> None:
    first, second = instances
    with _api(first) as a, _api(second) as b:
        assert a.put("/v1/policies/kept", json={"limits": [{"limit": 3, "window": 60}]}).is_success
        override = {"limits": [{"limit": 30, "window": 60}], "mode": "shadow"}
        assert a.put("/v1/policies/kept/overrides/acct:big-*", json=override).is_success
        assert a.put("/v1/policies/kept/overrides/acct:gone", json=override).is_success
        assert a.delete("/v1/policies/kept/overrides/acct:gone").is_success
        assert a.put("/v1/policies/dropped", json={"limits": [{"limit": 1, "window": 1}]})
        assert a.delete("/v1/policies/dropped").is_success
        # the other instance holds `kept` with its override before the loss ...
        assert _limit(b, "acct:big-1", "kept") == 30  # a policy b lacked is looked up at once
        # ... and never saw `late`, made just before it
        assert a.put("/v1/policies/late", json={"limits": [{"limit": 4, "window": 60}]})
        before = a.get("/v1/policies").json()
        kept = a.get("/v1/policies/kept").json()
        with redis.Redis.from_url(redis_alone.url) as plain:
            plain.flushall()
        # Redis is empty: the policies the instance holds still decide its checks
        assert _limit(b, "acct:big-2", "kept") == 30

        def restored() -> bool:
            try:
                return a.get("/v1/policies").json() == before
            except (httpx.HTTPError, ValueError):
                return False

        wait_until(restored, 15, "the policies back in Redis")
        assert a.get("/v1/policies/kept").json() == kept
        assert [o["identifier"] for o in kept["overrides"]] == ["acct:big-*"]
        # what the other instance never saw, it has within a second of the restore
        wait_until(lambda: b.post("/v1/check", json={"key": "x", "policy": "late"}).is_success,
                   1.0, "late on the other instance")  # fmt: skip
        assert _limit(b, "acct:big-9", "kept") == 30
        assert _limit(b, "acct:small", "kept") == 3
        assert b.post("/v1/check", json={"key": "x", "policy": "dropped"}).status_code == 422
