"""A real nginx, configured as ``docs/gateways.md`` says, in front of a small application,
asking a real `ratewatch serve` (which trusts nginx's X-Forwarded-For) through
``auth_request``: requests over the policy get 429 from nginx."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from stream.events import DecisionEvent, decode_entry
from stream.handlers import entry_record
from tests.support.credentials import create_key
from tests.support.nginx import App, Nginx, documented_config, render
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, RedisServer, start_limiter

PREFIX = "gate"  # the limiter's own key prefix: its keys and event stream apart
TENANT = "tgate" + secrets.token_hex(4)
LIMIT = 3


@pytest.fixture(scope="module")
def gate_limiter(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RatewatchProcess]:
    process = start_limiter(
        redis_server.url,
        tmp_path_factory.mktemp("gate-limiter"),
        "--key-prefix", PREFIX, "--trusted-proxies", "127.0.0.1", "--redis-events",
    )  # fmt: skip
    yield process
    process.stop()


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    application = App().start()
    yield application
    application.stop()


def start_nginx(workdir: Path, limiter: RatewatchProcess, app: App, key: str) -> Nginx:
    config = documented_config()
    return Nginx(workdir, lambda port: render(config, limiter.port, app.port, port, key)).start()


@pytest.fixture(scope="module")
def nginx(
    gate_limiter: RatewatchProcess,
    app: App,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Nginx]:
    admin = create_key(redis_server.url, TENANT, admin=True, prefix=PREFIX)
    policy = {"limits": [{"limit": LIMIT, "window": 60}]}
    created = httpx.put(
        gate_limiter.base_url + "/v1/policies/free",
        json=policy,
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert created.is_success, created.text
    key = create_key(redis_server.url, TENANT, prefix=PREFIX)
    server = start_nginx(tmp_path_factory.mktemp("nginx"), gate_limiter, app, key)
    yield server
    server.stop()


def events(redis_url: str) -> list[DecisionEvent]:
    async def read() -> list[DecisionEvent]:
        client = Redis.from_url(redis_url)
        try:
            entries = await client.xrange(f"{PREFIX}:events")
        finally:
            await client.aclose()
        return [e for i, f in entries for e in decode_entry(entry_record(i, f))]

    return [e for e in asyncio.run(read()) if e.tenant == TENANT]


@pytest.mark.timeout(60)
def test_over_the_policy_nginx_answers_429_with_retry_after_and_ratelimit_headers(
    nginx: Nginx, app: App, redis_server: RedisServer, gate_limiter: RatewatchProcess
) -> None:
    client = {"X-Forwarded-For": "198.51.100.10", "User-Agent": "gate-test/1"}
    before = len(app.requests)
    answers = [httpx.get(nginx.base_url + f"/shop/{n}?q=secret", headers=client)
               for n in range(LIMIT + 1)]  # fmt: skip
    assert [a.status_code for a in answers] == [200] * LIMIT + [429], nginx.log()
    assert answers[0].text == "hello from the app\n"
    assert answers[0].headers["ratelimit-policy"] == f'"free";q={LIMIT};w=60'
    assert answers[0].headers["ratelimit"].startswith(f'"free";r={LIMIT - 1};t=')
    denied = answers[-1]
    assert 1 <= int(denied.headers["retry-after"]) <= 120
    assert denied.headers["ratelimit"].startswith('"free";r=0;t=')
    assert denied.headers["ratelimit-policy"] == f'"free";q={LIMIT};w=60'
    assert denied.headers["content-type"] == "application/problem+json"
    assert denied.json()["type"] == "urn:ratewatch:problem:rate-limited"
    # the application saw the allowed requests only, and never the gate's key
    seen = app.requests[before:]
    assert [path for path, _ in seen] == [f"/shop/{n}?q=secret" for n in range(LIMIT)]
    assert all("x-ratewatch-key" not in headers for _, headers in seen)
    # another client address has a limit of its own
    other = httpx.get(nginx.base_url + "/shop", headers={"X-Forwarded-For": "198.51.100.11"})
    assert other.status_code == 200

    # each decision is a decision event of the tenant, with the original request in it
    def recorded() -> list[DecisionEvent]:
        return [e for e in events(redis_server.url) if e.ip == "198.51.100.10"]

    wait_until(lambda: len(recorded()) == LIMIT + 1, 10, "the gate's decision events")
    mine = recorded()
    assert [e.allowed for e in mine] == [True] * LIMIT + [False]
    assert [e.route for e in mine] == [f"/shop/{n}" for n in range(LIMIT + 1)]
    assert {(e.key, e.policy, e.user_agent, e.limit, e.window) for e in mine} == {
        ("198.51.100.10", "free", "gate-test/1", LIMIT, 60)}  # fmt: skip

    # and counted in the limiter's metrics, timed as the gate's
    def metrics() -> str:
        return httpx.get(gate_limiter.base_url + "/metrics", timeout=5).text

    wait_until(
        lambda: (
            'ratewatch_decisions_total{reason="limit",result="denied"}' in metrics()
            and 'ratewatch_check_duration_seconds_count{endpoint="gate"}' in metrics()
        ),
        10,
        "the gate's decisions in /metrics",
    )


def test_the_gate_believes_a_trusted_proxy_about_the_client_and_no_one_else(
    gate_limiter: RatewatchProcess, redis_server: RedisServer
) -> None:
    """The limiter trusts 127.0.0.1: X-Real-IP names the client without X-Forwarded-For,
    and in X-Forwarded-For the right-most address that is no trusted proxy does."""
    key = create_key(redis_server.url, TENANT, prefix=PREFIX)
    url = gate_limiter.base_url + "/v1/gate?limit=1&window=60"
    headers = {"X-RateWatch-Key": key}

    def statuses(client: dict[str, str]) -> list[int]:
        return [httpx.get(url, headers={**headers, **client}).status_code for _ in range(2)]

    assert statuses({"X-Real-IP": "192.0.2.20"}) == [200, 429]
    assert statuses({"X-Real-IP": "192.0.2.21"}) == [200, 429]
    # a client's own X-Forwarded-For entry left of the address nginx saw is not believed
    spoofed = [
        httpx.get(url, headers={**headers, "X-Forwarded-For": f"10.9.9.{n}, 192.0.2.22"})
        for n in range(2)
    ]
    assert [a.status_code for a in spoofed] == [200, 429]


@pytest.mark.timeout(60)
def test_a_bad_key_makes_nginx_answer_401_not_500(
    gate_limiter: RatewatchProcess, app: App, tmp_path: Path
) -> None:
    server = start_nginx(tmp_path / "nginx", gate_limiter, app, "rwk_not-a-valid-key")
    try:
        before = len(app.requests)
        answer = httpx.get(server.base_url + "/shop")
        assert answer.status_code == 401, server.log()
        assert len(app.requests) == before
    finally:
        server.stop()
