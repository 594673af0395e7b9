"""`ratewatch up` through a Redis outage: every check the failure policy answers (fail_open,
fail_closed) becomes exactly one analytics row once Redis answers again, even when the
limiter that answered it is killed before that; the call in flight when Redis froze is not
run when it thaws (past its deadline), so it is neither counted twice nor charged."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from analytics.query_client import answers, query
from tests.support.credentials import create_key
from tests.support.polling import wait_until
from tests.support.processes import child_pid
from tests.support.servers import RatewatchProcess, RedisServer, start_stack

pytestmark = pytest.mark.timeout(300)

BOOTSTRAP = "outage-counted-test-key-0123456789abcdef"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, to freeze (persistent, like the embedded Valkey)."""
    server = RedisServer(tmp_path / "redis", persist=True).start()
    yield server
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)  # never leave it frozen
    server.stop()


@pytest.fixture
def service(own_redis: RedisServer, tmp_path: Path) -> Iterator[RatewatchProcess]:
    process = start_stack(
        tmp_path, "--redis-url", own_redis.url, "--batch-max-age", "0.2",
        env={"RATEWATCH_BOOTSTRAP_KEY": BOOTSTRAP},
    )  # fmt: skip
    yield process
    process.stop(timeout=60)


def rows(socket: Path, where: str, what: str = "count()") -> int:
    if not answers(socket):
        return -1
    sql = f"SELECT {what} AS n FROM ratewatch.decisions WHERE {where}"
    return int(query(socket, sql)[0]["n"])


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def refused_calls(server: RedisServer) -> int:
    """Calls the check script refused as past their deadline."""
    with redis.Redis.from_url(server.url) as client:
        stats: dict[str, Any] = client.info("errorstats")
    return int(stats.get("errorstat_PASTDEADLINE", {}).get("count", 0))


def spool_status(client: httpx.Client) -> dict[str, Any]:
    status: dict[str, Any] = client.get("/health/detailed").json()["dependencies"]["outage_spool"]
    return status


def test_decisions_answered_while_redis_is_frozen_are_counted_once(
    own_redis: RedisServer, service: RatewatchProcess
) -> None:
    assert own_redis.process is not None
    assert service.data_dir is not None
    data_dir = service.data_dir
    redis_pid = own_redis.process.pid
    socket = data_dir / "clickhouse" / "query.sock"
    closed_key = create_key(own_redis.url, "outage-closed", admin=True)
    base = service.base_url
    opened = httpx.Client(
        base_url=base, timeout=10, headers={"Authorization": f"Bearer {BOOTSTRAP}"}
    )
    closed = httpx.Client(
        base_url=base, timeout=10, headers={"Authorization": f"Bearer {closed_key}"}
    )
    try:
        assert closed.patch("/v1/settings", json={"fail_mode": "closed"}).status_code == 200
        reasons: dict[str, list[str]] = {"default": [], "outage-closed": []}

        def send(client: httpx.Client, tenant: str, body: dict[str, Any]) -> None:
            response = client.post("/v1/check", json=body)
            assert response.status_code == 200, response.text
            reasons[tenant].append(response.json()["reason"])

        for i in range(10):
            send(opened, "default", {"key": f"before:{i}", "limit": 100, "window": 60})
        send(closed, "outage-closed", {"key": "before", "limit": 100, "window": 60})

        os.kill(redis_pid, signal.SIGSTOP)
        for i in range(30):
            body = {"key": f"out:{i % 4}", "limit": 5, "window": 60, "ip": "198.51.100.7"}
            send(opened, "default", body)
        batch = [{"key": f"batch:{i}", "limit": 100, "window": 60} for i in range(20)]
        response = opened.post("/v1/batch", json={"checks": batch})
        assert response.status_code == 200
        reasons["default"] += [result["reason"] for result in response.json()["results"]]
        for _ in range(5):
            send(closed, "outage-closed", {"key": "during", "limit": 100, "window": 60})
        answered_open = reasons["default"].count("fail_open")
        answered_limit = reasons["default"].count("limit")
        # the local store kept the limit of 5 per key during the outage: 4 keys × 5 allowed
        assert (answered_open, answered_limit) == (20 + 20, 10)
        assert reasons["outage-closed"][1:] == ["fail_closed"] * 5

        detailed = opened.get("/health/detailed").json()
        spool = detailed["dependencies"]["outage_spool"]
        assert detailed["status"] == "degraded"
        assert spool["status"] == "spooling"
        assert spool["spooled_decisions"] == 55
        assert metric(opened.get("/metrics").text, "ratewatch_outage_decisions_spooled_total") == 55

        # the limiter dies with the decisions on disk only; the supervisor restarts it,
        # and the new process appends what the old one answered once Redis answers
        wait_until(lambda: spool_status(opened)["unwritten"] == 0, 10, "the spool's fsync")
        limiter = child_pid(data_dir, "limiter")
        os.kill(limiter, signal.SIGKILL)
    finally:
        os.kill(redis_pid, signal.SIGCONT)

    def restarted() -> bool:
        try:
            pid = child_pid(data_dir, "limiter")
            return pid != limiter and opened.get("/health").status_code == 200
        except (OSError, ValueError, httpx.HTTPError):
            return False

    try:
        wait_until(restarted, 60, "the limiter's restart", 0.2)
        total_open = answered_open + answered_limit
        tenant_open = "tenant = 'default' AND key NOT LIKE 'before:%'"
        outage = f"{tenant_open} AND reason IN ('fail_open', 'limit')"
        wait_until(lambda: rows(socket, outage) >= total_open, 60, f"{total_open} outage rows", 0.2)
        wait_until(
            lambda: rows(socket, "tenant = 'outage-closed' AND reason = 'fail_closed'") >= 5,
            60, "5 fail_closed rows",
            0.2,
        )  # fmt: skip
        assert spool_status(opened)["status"] == "up"
        assert spool_status(opened)["entries"] == 0
        metrics = opened.get("/metrics").text
        assert metric(metrics, "ratewatch_outage_decisions_replayed_total") == 55
        assert metric(metrics, "ratewatch_outage_decisions_dropped_total") == 0

        # exactly once: counted now, and still once after the pipeline had time to repeat
        assert rows(socket, f"{tenant_open} AND reason = 'fail_open'") == answered_open
        assert rows(socket, f"{tenant_open} AND reason = 'limit'") == answered_limit
        assert rows(socket, "tenant = 'outage-closed' AND reason = 'fail_closed'") == 5
        assert rows(socket, outage, "uniqExact(event_id)") == total_open
        assert rows(socket, "key = 'out:0' AND ip = '198.51.100.7'") >= 1
        # the rows carry when each decision was answered, not when it was appended
        span = query(
            socket,
            "SELECT toUnixTimestamp64Milli(max(ts)) - toUnixTimestamp64Milli(min(ts)) AS ms "
            f"FROM ratewatch.decisions WHERE {outage}",
        )[0]["ms"]
        assert int(span) < 30_000
        # the calls in flight when Redis froze (one, or two when a second was sent before
        # the store was declared down) reached the check script when it thawed, past their
        # deadline: refused, they wrote no decision of Redis's beside the answered ones
        assert rows(socket, f"{tenant_open} AND reason = 'ok'") == 0
        assert rows(socket, tenant_open) == total_open
        assert rows(socket, tenant_open, "uniqExact(event_id)") == total_open
        assert 1 <= refused_calls(own_redis) <= 2
        before = rows(socket, "tenant = 'default' AND key LIKE 'before:%'")
        assert before == 10
        # nor did it charge a counter: the frozen call's key has all but this check left
        response = opened.post("/v1/check", json={"key": "out:0", "limit": 5, "window": 60})
        assert (response.json()["reason"], response.json()["remaining"]) == ("ok", 4)
    finally:
        opened.close()
        closed.close()
