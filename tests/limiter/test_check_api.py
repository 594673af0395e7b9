"""The check API through a real `ratewatch serve` on a real Redis."""

from __future__ import annotations

import concurrent.futures
import secrets
from collections.abc import Iterator

import httpx
import pytest

from tests.support.credentials import create_key
from tests.support.servers import RatewatchProcess, RedisServer, start_limiter


def check(api: httpx.Client, **body: object) -> httpx.Response:
    return api.post("/v1/check", json=body)


def test_brief_example_100_per_hour(api: httpx.Client) -> None:
    for expected_remaining in range(99, -1, -1):
        response = check(api, key="user:123", limit=100, window=3600, cost=1)
        assert response.status_code == 200
        body = response.json()
        assert body["allowed"] is True
        assert body["remaining"] == expected_remaining
        assert body["retry_after"] is None
        assert 0 < body["reset_in"] <= 3600
    denied = check(api, key="user:123", limit=100, window=3600)
    assert denied.status_code == 200
    body = denied.json()
    assert body["allowed"] is False
    assert body["reason"] == "limit"
    assert body["remaining"] == 0
    assert body["retry_after"] > 0
    assert denied.headers["ratelimit-policy"] == '"default";q=100;w=3600'
    assert denied.headers["ratelimit"] == f'"default";r=0;t={body["reset_in"]}'
    assert denied.headers["retry-after"] == str(body["retry_after"])


@pytest.mark.parametrize("algorithm", ["sliding_window", "token_bucket", "fixed_window"])
def test_each_algorithm_allows_exactly_the_limit(api: httpx.Client, algorithm: str) -> None:
    results = [
        check(api, key="k", limit=5, window=600, algorithm=algorithm).json() for _ in range(7)
    ]
    assert [r["allowed"] for r in results] == [True] * 5 + [False] * 2
    assert [r["remaining"] for r in results[:5]] == [4, 3, 2, 1, 0]
    assert all(r["retry_after"] >= 1 for r in results[5:])


def test_cost_is_counted_and_a_cost_above_the_limit_is_denied_with_a_reason(
    api: httpx.Client,
) -> None:
    assert check(api, key="c", limit=10, window=60, cost=4).json()["remaining"] == 6
    over = check(api, key="c", limit=10, window=60, cost=11).json()
    assert over["allowed"] is False
    assert over["reason"] == "cost_exceeds_limit"
    assert over["retry_after"] is None
    assert over["remaining"] == 6  # nothing was used
    more = check(api, key="c", limit=10, window=60, cost=7).json()
    assert (more["allowed"], more["reason"], more["remaining"]) == (False, "limit", 6)
    assert check(api, key="c", limit=10, window=60, cost=6).json()["remaining"] == 0


def test_cost_zero_reads_without_using(api: httpx.Client) -> None:
    check(api, key="peek", limit=3, window=60)
    for _ in range(3):
        body = check(api, key="peek", limit=3, window=60, cost=0).json()
        assert (body["allowed"], body["remaining"]) == (True, 2)


def test_keys_of_different_windows_and_algorithms_are_separate_counters(
    api: httpx.Client,
) -> None:
    assert check(api, key="w", limit=1, window=60).json()["allowed"] is True
    assert check(api, key="w", limit=1, window=60).json()["allowed"] is False
    assert check(api, key="w", limit=1, window=61).json()["allowed"] is True
    assert check(api, key="w", limit=1, window=60, algorithm="fixed_window").json()["allowed"]


def test_batch_answers_in_order(api: httpx.Client) -> None:
    checks = [{"key": f"b{i % 3}", "limit": 2, "window": 60} for i in range(9)]
    response = api.post("/v1/batch", json={"checks": checks})
    assert response.status_code == 200
    allowed = [r["allowed"] for r in response.json()["results"]]
    # b0, b1, b2 each get two allowed in order of appearance
    assert allowed == [True, True, True, True, True, True, False, False, False]


def test_batch_of_the_documented_maximum_and_one_more(api: httpx.Client) -> None:
    checks = [{"key": f"m{i}", "limit": 5, "window": 60} for i in range(1000)]
    response = api.post("/v1/batch", json={"checks": checks})
    assert response.status_code == 200
    assert len(response.json()["results"]) == 1000
    too_many = api.post("/v1/batch", json={"checks": [*checks, checks[0]]})
    assert too_many.status_code == 422
    assert too_many.headers["content-type"] == "application/problem+json"


def test_tenants_have_separate_counters(
    api: httpx.Client, limiter: RatewatchProcess, redis_server: RedisServer
) -> None:
    other = create_key(redis_server.url, "other" + secrets.token_hex(6))
    assert check(api, key="shared", limit=1, window=60).json()["allowed"] is True
    assert check(api, key="shared", limit=1, window=60).json()["allowed"] is False
    with httpx.Client(
        base_url=limiter.base_url, headers={"Authorization": f"Bearer {other}"}
    ) as client:
        assert check(client, key="shared", limit=1, window=60).json()["allowed"] is True


def test_concurrent_checks_let_exactly_the_limit_through(api: httpx.Client) -> None:
    def one(_: int) -> bool:
        return bool(check(api, key="race", limit=50, window=600).json()["allowed"])

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        allowed = sum(pool.map(one, range(300)))
    assert allowed == 50


@pytest.fixture(scope="module")
def second_limiter(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RatewatchProcess]:
    """Another limiter instance on the same Redis, as behind a load balancer."""
    process = start_limiter(redis_server.url, tmp_path_factory.mktemp("second-limiter"))
    yield process
    process.stop()


@pytest.mark.timeout(120)
def test_two_instances_on_one_redis_allow_exactly_the_limit(
    limiter: RatewatchProcess, second_limiter: RatewatchProcess, admin_key: str
) -> None:
    headers = {"Authorization": f"Bearer {admin_key}"}
    clients = [httpx.Client(base_url=instance.base_url, headers=headers, timeout=30,
                            limits=httpx.Limits(max_connections=32))
               for instance in (limiter, second_limiter)]  # fmt: skip

    def one(index: int) -> bool:
        response = check(clients[index % 2], key="shared-limit", limit=100, window=600)
        return bool(response.json()["allowed"])

    try:
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            allowed = sum(pool.map(one, range(1000)))
    finally:
        for client in clients:
            client.close()
    assert allowed == 100
