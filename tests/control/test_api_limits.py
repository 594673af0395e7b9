"""RateWatch's limits on its own API (``limiter/api_limits.py``), against a real
``ratewatch serve`` on the session's Redis: per tenant on the control plane, test pings and
privacy requests, per client address on failed authentication."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from limiter.api_limits import ApiLimits, Rate, parse_rate
from limiter.errors import ConfigError
from ratewatch.cli.options import API_LIMIT_OPTIONS
from ratewatch.cli.serve import parse_api_limits
from tests.support.credentials import create_key
from tests.support.servers import RatewatchProcess, RedisServer, start_limiter

PROBLEM = "application/problem+json"
HOOK = {"url": "http://127.0.0.1:9/hook"}  # nothing delivers: serve runs no webhook worker


@pytest.fixture(scope="module")
def prefix() -> str:
    return "rwl" + secrets.token_hex(3)


@pytest.fixture(scope="module")
def limited(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, prefix: str
) -> Iterator[RatewatchProcess]:
    """A limiter with small limits, its decisions appended to its Redis stream (as in
    ``ratewatch up``); test pings keep their default."""
    process = start_limiter(
        redis_server.url,
        tmp_path_factory.mktemp("limited"),
        "--key-prefix",
        prefix,
        "--redis-events",
        "--control-rate-limit",
        "10/1m",
        "--privacy-rate-limit",
        "3/1m",
        env={"RATEWATCH_AUTH_FAILURE_LIMIT": "5/1m", "RATEWATCH_WEBHOOKS_ALLOW_PRIVATE": "1"},
    )
    yield process
    process.stop()


def _client(
    process: RatewatchProcess, key: str | None = None, address: str = "127.0.0.1"
) -> httpx.Client:
    """A client of ``process`` connecting from ``address`` (any of 127.0.0.0/8)."""
    return httpx.Client(
        base_url=process.base_url,
        timeout=10,
        headers={"Authorization": f"Bearer {key}"} if key else {},
        transport=httpx.HTTPTransport(local_address=address),
    )


def _assert_throttled(response: httpx.Response, window: int) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == PROBLEM
    retry_after = int(response.headers["retry-after"])
    # a sliding window: the earliest success can be up to a window past the current one
    assert 1 <= retry_after <= 2 * window
    problem = response.json()
    assert problem["type"] == "urn:ratewatch:problem:too-many-requests"
    assert problem["status"] == 429
    assert problem["retry_after"] == retry_after


def test_the_101st_test_ping_within_the_hour_is_refused(
    limited: RatewatchProcess, redis_server: RedisServer, prefix: str
) -> None:
    first, second = "t" + secrets.token_hex(5), "t" + secrets.token_hex(5)
    keys = [create_key(redis_server.url, t, admin=True, prefix=prefix) for t in (first, second)]
    with _client(limited, keys[0]) as api, _client(limited, keys[1]) as other:
        hook = api.post("/v1/webhooks", json=HOOK).json()["id"]
        other_hook = other.post("/v1/webhooks", json=HOOK).json()["id"]
        for _ in range(100):
            assert api.post(f"/v1/webhooks/{hook}/test").status_code == 202
        _assert_throttled(api.post(f"/v1/webhooks/{hook}/test"), 3600)
        # another tenant pings on
        assert other.post(f"/v1/webhooks/{other_hook}/test").status_code == 202
        # the tenant's other control-plane routes have their own limit
        assert api.get("/v1/webhooks").status_code == 200
    pending = Redis.from_url(redis_server.url)
    try:
        queued = pending.hvals(f"{prefix}:{{{prefix}:.webhooks}}:pending")
    finally:
        pending.close()
    assert sum(first.encode() in delivery for delivery in queued) == 100


def test_privacy_requests_and_control_routes_are_limited_per_tenant(
    limited: RatewatchProcess, redis_server: RedisServer, prefix: str
) -> None:
    first, second = "t" + secrets.token_hex(5), "t" + secrets.token_hex(5)
    standard = create_key(redis_server.url, first, prefix=prefix)
    admin = create_key(redis_server.url, first, admin=True, prefix=prefix)
    other = create_key(redis_server.url, second, admin=True, prefix=prefix)
    body = {"user_id": "u1"}
    with _client(limited, standard) as api, _client(limited, admin) as admin_api:
        for _ in range(3):
            assert api.post("/v1/privacy/summary", json=body).status_code == 200
        _assert_throttled(api.post("/v1/privacy/summary", json=body), 60)
        # summaries and erasures share the tenant's privacy limit, whatever the key
        erase = {"user_id": "u1", "reason": "test"}
        _assert_throttled(admin_api.post("/v1/privacy/delete", json=erase), 60)
        for _ in range(10):
            assert admin_api.get("/v1/keys").status_code == 200
        refused = admin_api.get("/v1/blocks")
        _assert_throttled(refused, 60)
        assert "10/60s control-plane requests" in refused.json()["detail"]
        # the check path has no per-tenant limit of the API's own
        check = api.post("/v1/check", json={"key": "k", "limit": 5, "window": 60})
        assert check.status_code == 200
    with _client(limited, other) as api:
        assert api.post("/v1/privacy/summary", json=body).status_code == 200
        assert api.get("/v1/keys").status_code == 200


def test_failed_authentication_is_limited_per_client_address(
    limited: RatewatchProcess, redis_server: RedisServer, prefix: str, tenant: str
) -> None:
    valid = create_key(redis_server.url, tenant, prefix=prefix)
    check = {"key": "k", "limit": 5, "window": 60}
    with (
        _client(limited, "rwk_wrong", "127.0.0.2") as wrong,
        _client(limited, None, "127.0.0.2") as anonymous,
        _client(limited, "rwk_wrong", "127.0.0.3") as elsewhere,
        _client(limited, valid, "127.0.0.2") as right,
    ):
        for _ in range(3):
            assert wrong.post("/v1/check", json=check).status_code == 401
        # every way of failing counts, on every /v1 route
        assert anonymous.get("/v1/keys").status_code == 401
        assert wrong.get("/v1/blocks").status_code == 401
        _assert_throttled(wrong.post("/v1/check", json=check), 60)
        _assert_throttled(anonymous.get("/v1/keys"), 60)
        _assert_throttled(wrong.post("/v1/batch", json={"checks": [check]}), 60)
        # another address still gets its 401
        assert elsewhere.post("/v1/check", json=check).status_code == 401
        # a valid key from the throttled address is served: the limit is on failures
        assert right.post("/v1/check", json=check).status_code == 200
        assert right.post("/v1/privacy/summary", json={"user_id": "u"}).status_code == 200
        # and a forwarded-for header is not believed from a peer not named as a proxy
        forwarded = wrong.get("/v1/keys", headers={"X-Forwarded-For": "203.0.113.9"})
        _assert_throttled(forwarded, 60)


def test_the_limits_never_reach_the_decision_stream_or_a_tenant(
    limited: RatewatchProcess, redis_server: RedisServer, prefix: str, tenant: str
) -> None:
    admin = create_key(redis_server.url, tenant, admin=True, prefix=prefix)
    events_before = _xlen(redis_server, f"{prefix}:events")
    with _client(limited, admin) as api, _client(limited, "rwk_wrong", "127.0.0.5") as wrong:
        assert api.get("/v1/keys").status_code == 200
        assert api.post("/v1/privacy/summary", json={"user_id": "u"}).status_code == 200
        assert wrong.get("/v1/keys").status_code == 401
        assert api.post("/v1/check", json={"key": "k", "limit": 5, "window": 60}).status_code == 200
    redis = Redis.from_url(redis_server.url)
    try:
        internal = [k.decode() for k in redis.scan_iter(f"{prefix}:{{{prefix}:.api}}:*")]
        entries: list[Any] = redis.xrange(  # type: ignore[assignment]
            f"{prefix}:events"
        )
    finally:
        redis.close()
    assert any(f":control:{tenant}" in k for k in internal), internal
    assert any(f":privacy:{tenant}" in k for k in internal), internal
    assert any(":authfail:127.0.0.5" in k for k in internal), internal
    # the stream holds the customers' decisions only: the tenant's one check, no '.api'
    assert _xlen(redis_server, f"{prefix}:events") == events_before + 1
    assert not any(b".api" in value for _, fields in entries for value in fields.values())


def test_a_trusted_proxy_names_the_client(
    redis_server: RedisServer, tmp_path: Path, tenant: str
) -> None:
    process = start_limiter(
        redis_server.url,
        tmp_path,
        "--trusted-proxies",
        "127.0.0.1",
        env={"RATEWATCH_AUTH_FAILURE_LIMIT": "2/1m"},
    )
    try:
        with _client(process, "rwk_wrong") as proxy:
            first = {"X-Forwarded-For": "203.0.113.7"}
            second = {"X-Forwarded-For": "203.0.113.8"}
            assert proxy.get("/v1/keys", headers=first).status_code == 401
            assert proxy.get("/v1/keys", headers=first).status_code == 401
            _assert_throttled(proxy.get("/v1/keys", headers=first), 60)
            assert proxy.get("/v1/keys", headers=second).status_code == 401
    finally:
        process.stop()


def _xlen(redis_server: RedisServer, stream: str) -> int:
    redis = Redis.from_url(redis_server.url)
    try:
        return int(redis.xlen(stream))
    finally:
        redis.close()


def test_rates_are_parsed_and_validated() -> None:
    assert parse_rate("100/1h") == Rate(100, 3600)
    assert parse_rate("30/60") == Rate(30, 60)
    assert parse_rate(" 5 / 2m ") == Rate(5, 120)
    assert parse_rate("off") is None
    for bad in ("", "100", "1h/100", "0/1m", "10/0", "10/2d", "-1/1m", "10/25h"):
        with pytest.raises(ConfigError, match="rate"):
            parse_rate(bad)
    # the command line's defaults are the settings' defaults
    defaults = {name: default for name, (default, _) in API_LIMIT_OPTIONS.items()}
    assert parse_api_limits(defaults) == ApiLimits()
    with pytest.raises(ConfigError, match="--privacy-rate-limit: rate 'lots'"):
        parse_api_limits({**defaults, "--privacy-rate-limit": "lots"})


def _refused(redis_server: RedisServer, tmp_path: Path, *args: str, **env: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "ratewatch", "serve", "--redis-url", redis_server.url,
         "--data-dir", str(tmp_path), *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip
    assert done.returncode == 1, done
    lines: list[str] = done.stderr.strip().splitlines()
    return lines


def test_a_bad_limit_or_proxy_stops_serve_with_one_line(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    assert _refused(redis_server, tmp_path, RATEWATCH_AUTH_FAILURE_LIMIT="0/1m") == [
        "Error: --auth-failure-limit: rate '0/1m': the limit must be within 1-1000000"
    ]
    assert _refused(redis_server, tmp_path, "--test-ping-rate-limit", "many") == [
        "Error: --test-ping-rate-limit: rate 'many' is not LIMIT/WINDOW (for example 100/1h, "
        "30/60) or off"
    ]
    assert _refused(redis_server, tmp_path, "--trusted-proxies", "10.0.0.0/8,proxy.local") == [
        "Error: trusted proxy 'proxy.local' in '10.0.0.0/8,proxy.local' is not an address, "
        "a network or *"
    ]
