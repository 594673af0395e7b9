"""The failure policy against a Redis that is killed, restarted and frozen."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.credentials import create_key
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, RedisServer, start_limiter

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own (persistent, so keys survive its crash)."""
    server = RedisServer(tmp_path_factory.mktemp("failover-redis"), persist=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_limiter(
    own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RatewatchProcess]:
    process = start_limiter(own_redis.url, tmp_path_factory.mktemp("failover-limiter"))
    yield process
    process.stop()


def redis_status(base_url: str) -> str:
    detailed = httpx.get(base_url + "/health/detailed", timeout=5).json()
    return str(detailed["dependencies"]["redis"]["status"])


def test_checks_are_answered_through_a_redis_crash_and_recover(
    own_redis: RedisServer,
    own_limiter: RatewatchProcess,
    tmp_path: Path,
) -> None:
    open_key = create_key(own_redis.url, "failopen", admin=True)
    closed_key = create_key(own_redis.url, "failclosed", admin=True)
    base = own_limiter.base_url
    with (
        httpx.Client(
            base_url=base, timeout=5, headers={"Authorization": f"Bearer {open_key}"}
        ) as opened,
        httpx.Client(
            base_url=base, timeout=5, headers={"Authorization": f"Bearer {closed_key}"}
        ) as closed,
    ):
        assert closed.patch("/v1/settings", json={"fail_mode": "closed"}).status_code == 200
        body = {"key": "loop", "limit": 1000, "window": 60}
        for _ in range(20):
            assert opened.post("/v1/check", json=body).json()["reason"] == "ok"
        assert closed.post("/v1/check", json=body).json()["reason"] == "ok"

        own_redis.kill()
        reasons = []
        for _ in range(50):
            response = opened.post("/v1/check", json=body)
            assert response.status_code == 200
            reasons.append(response.json()["reason"])
        assert set(reasons) == {"fail_open"}
        # the local store still limits: a small limit is enforced during the outage
        small = [
            opened.post("/v1/check", json={"key": "small", "limit": 3, "window": 60}).json()
            for _ in range(5)
        ]
        assert [r["allowed"] for r in small] == [True, True, True, False, False]
        denied = closed.post("/v1/check", json=body).json()
        assert (denied["allowed"], denied["reason"]) == (False, "fail_closed")
        assert denied["retry_after"] >= 1
        assert redis_status(base) == "down"
        detailed = httpx.get(base + "/health/detailed", timeout=5).json()
        assert detailed["status"] == "degraded"
        metrics = httpx.get(base + "/metrics", timeout=5).text
        assert "ratewatch_redis_up 0.0" in metrics
        assert 'ratewatch_decisions_total{reason="fail_open",result="allowed"}' in metrics

        own_redis.start()
        wait_until(lambda: redis_status(base) == "up", 10, "the limiter to see Redis again")
        assert opened.post("/v1/check", json=body).json()["reason"] == "ok"
        assert closed.post("/v1/check", json=body).json()["reason"] == "ok"
        assert "ratewatch_redis_up 1.0" in httpx.get(base + "/metrics", timeout=5).text


def test_a_frozen_redis_costs_at_most_the_timeout(
    own_redis: RedisServer, own_limiter: RatewatchProcess
) -> None:
    api_key = create_key(own_redis.url, "frozen")
    base = own_limiter.base_url
    with httpx.Client(
        base_url=base, timeout=5, headers={"Authorization": f"Bearer {api_key}"}
    ) as client:
        body = {"key": "f", "limit": 100, "window": 60}
        assert client.post("/v1/check", json=body).json()["reason"] == "ok"
        assert own_redis.process is not None
        pid = own_redis.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            reasons = [client.post("/v1/check", json=body).json()["reason"] for _ in range(20)]
            assert set(reasons) == {"fail_open"}
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: redis_status(base) == "up", 10, "the limiter to see Redis again")
        assert client.post("/v1/check", json=body).json()["reason"] == "ok"
