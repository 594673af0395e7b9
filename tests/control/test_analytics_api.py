"""``GET /v1/analytics/usage`` end to end: checks through the HTTP API of a real
`ratewatch up`, the Redis event stream, the pipeline and chDB's rollups, and back."""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Any

import httpx
import jsonschema
import pytest

from analytics.query_client import query
from analytics.tables import ROLLUP_TABLES, TENANT_ROLLUP_TABLES
from tests.support.credentials import STACK_PREFIX, create_key
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, RedisServer

pytestmark = pytest.mark.timeout(180)

WINDOWS = ("1h", "24h", "7d", "30d")


def usage(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/analytics/usage", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for_requests(client: httpx.Client, expected: int, **params: Any) -> None:
    wait_until(
        lambda: usage(client, window="1h", **params)["totals"]["requests"] >= expected,
        60,
        f"{expected} requests in the usage API",
        0.2,
    )


def send(client: httpx.Client, checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for start in range(0, len(checks), 200):
        response = client.post("/v1/batch", json={"checks": checks[start : start + 200]})
        assert response.status_code == 200, response.text
        results += response.json()["results"]
    return results


def test_usage_totals_equal_decisions_sent_per_key_route_segment_and_window(
    stack: RatewatchProcess, redis_server: RedisServer, tenant: str, admin: httpx.Client
) -> None:
    # a standard key whose checks default to segment "enterprise"
    enterprise = create_key(redis_server.url, tenant, prefix=STACK_PREFIX, segment="enterprise")
    plan = [
        # (key, route, segment in the request, count, limit)
        ("user:1", "/search", "free", 7, 5),  # 2 denied
        ("user:1", "/orders", "free", 3, 100),
        ("user:2", "/search", "pro", 4, 100),
        ("user:3", "/search", None, 6, 100),  # the admin key has no segment: ''
    ]
    checks = [
        {
            "key": key,
            "limit": limit,
            "window": 60,
            "route": route,
            **({"segment": segment} if segment else {}),
        }
        for key, route, segment, count, limit in plan
        for _ in range(count)
    ]
    results = send(admin, checks)
    with stack.client(enterprise) as client:
        for _ in range(5):
            response = client.post(
                "/v1/check", json={"key": "user:4", "limit": 100, "window": 60, "route": "/orders"}
            )
            assert response.status_code == 200, response.text
    total = len(checks) + 5
    denied = sum(not result["allowed"] for result in results)
    assert denied == 2

    wait_for_requests(admin, total)
    by_key = Counter({"user:1": 10, "user:2": 4, "user:3": 6, "user:4": 5})
    by_route = Counter({"/search": 17, "/orders": 8})
    by_segment = Counter({"free": 10, "pro": 4, "": 6, "enterprise": 5})
    for window in WINDOWS:
        body = usage(admin, window=window)
        assert body["totals"]["requests"] == total, window
        assert body["totals"]["denied"] == denied
        assert body["totals"]["allowed"] == total - denied
        assert body["totals"]["latency_us"]["p50"] is not None
        assert sum(point["requests"] for point in body["series"]) == total
        for dimension, expected in (("key", by_key), ("route", by_route), ("segment", by_segment)):
            grouped = usage(admin, window=window, group_by=dimension, top=10)
            assert {g["value"]: g["requests"] for g in grouped["groups"]} == expected, dimension
            for value, count in expected.items():
                if value:
                    filtered = usage(admin, window=window, **{dimension: value})
                    assert filtered["totals"]["requests"] == count, (window, dimension, value)
    # top=N: the N biggest, biggest first
    top = usage(admin, window="1h", group_by="key", top=2)["groups"]
    assert [(g["value"], g["requests"]) for g in top] == [("user:1", 10), ("user:3", 6)]
    # filters combine
    combined = usage(admin, key="user:1", route="/search")["totals"]
    assert (combined["requests"], combined["denied"], combined["allowed"]) == (7, 2, 5)


def test_series_has_a_point_per_step_and_the_response_matches_the_published_schema(
    stack: RatewatchProcess, tenant: str, admin: httpx.Client
) -> None:
    send(admin, [{"key": "k", "limit": 10, "window": 60, "route": "/r"}] * 3)
    wait_for_requests(admin, 3)
    schema = admin.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for window, steps in (("1h", 60), ("24h", 24), ("7d", 168), ("30d", 30)):
        body = usage(admin, window=window, group_by="route")
        # one point per step from the window's start to now, both ends included
        assert steps <= len(body["series"]) <= steps + 2, (window, len(body["series"]))
        timestamps = [point["ts"] for point in body["series"]]
        assert timestamps == sorted(timestamps)
        jsonschema.validate(
            body,
            {"$ref": "#/components/schemas/UsageResponse", "components": {"schemas": components}},
        )
    assert "/v1/analytics/usage" in schema["paths"]


def test_a_tenant_sees_only_its_own_usage(
    stack: RatewatchProcess, redis_server: RedisServer, tenant: str, admin: httpx.Client
) -> None:
    send(admin, [{"key": "shared-name", "limit": 100, "window": 60}] * 4)
    wait_for_requests(admin, 4)
    other = "t" + secrets.token_hex(6)
    with stack.client(create_key(redis_server.url, other, admin=True, prefix=STACK_PREFIX)) as b:
        assert usage(b, key="shared-name")["totals"]["requests"] == 0
        assert usage(b, group_by="key")["groups"] == []
        assert usage(b)["tenant"] == other
    assert usage(admin, key="shared-name")["totals"]["requests"] == 4


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"window": "banana"}, "window 'banana'"),
        ({"top": "-1", "group_by": "key"}, "top -1"),
        ({"top": "many"}, "top 'many'"),
        ({"group_by": "colour"}, "group_by 'colour'"),
        ({"key": "k" * 10_000}, "key must be"),
        ({"segment": "s" * 65}, "segment must be"),
        ({"windows": "1h"}, "unknown query parameter 'windows'"),
    ],
)
def test_bad_usage_parameters_are_problem_details(
    admin: httpx.Client, params: dict[str, str], fragment: str
) -> None:
    response = admin.get("/v1/analytics/usage", params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "urn:ratewatch:problem:validation-error"
    assert fragment in problem["detail"]


def test_usage_needs_a_valid_key(stack: RatewatchProcess) -> None:
    response = httpx.get(stack.base_url + "/v1/analytics/usage", timeout=10)
    assert response.status_code == 401
    assert response.json()["type"] == "urn:ratewatch:problem:unauthorized"


def test_a_bad_segment_on_a_check_is_refused(admin: httpx.Client) -> None:
    response = admin.post(
        "/v1/check", json={"key": "k", "limit": 1, "window": 1, "segment": "x" * 65}
    )
    assert response.status_code == 422
    assert "segment" in response.json()["detail"]
    response = admin.post("/v1/keys", json={"segment": "y" * 65})
    assert response.status_code == 422


def test_a_shadow_policys_would_be_denials_count_as_allowed_and_apart(
    stack: RatewatchProcess, tenant: str, admin: httpx.Client
) -> None:
    """Shadow mode answers allowed; the usage API and every rollup count that answer, and
    the would-be denials as ``shadow_denied`` (migration 0011), while the raw rows keep the
    policy's verdict."""
    trial = {"limits": [{"limit": 2, "window": 60}], "mode": "shadow"}
    assert admin.put("/v1/policies/trial", json=trial).status_code == 201
    paid = {"limits": [{"limit": 2, "window": 60}]}
    assert admin.put("/v1/policies/paid", json=paid).status_code == 201
    shadowed = send(admin, [{"key": "user:s", "policy": "trial", "route": "/a"}] * 5)
    enforced = send(admin, [{"key": "user:p", "policy": "paid", "route": "/a"}] * 3)
    assert [r["allowed"] for r in shadowed] == [True] * 5
    assert [r["allowed"] for r in enforced] == [True, True, False]

    wait_for_requests(admin, 8)
    counts = ("requests", "allowed", "denied", "shadow_denied")
    for window in WINDOWS:
        totals = usage(admin, window=window)["totals"]
        assert tuple(totals[c] for c in counts) == (8, 7, 1, 3), window
        assert totals["deny_rate"] == 0.125
        groups = usage(admin, window=window, group_by="key")["groups"]
        assert {g["value"]: tuple(g[c] for c in counts) for g in groups} == {
            "user:s": (5, 5, 0, 3),
            "user:p": (3, 2, 1, 0),
        }

    assert stack.data_dir is not None
    socket = stack.data_dir / "clickhouse" / "query.sock"
    raw = query(
        socket,
        "SELECT key, countIf(NOT allowed) AS denied, countIf(shadow) AS shadow "
        f"FROM ratewatch.decisions WHERE tenant = '{tenant}' GROUP BY key ORDER BY key",
    )
    assert raw == [
        {"key": "user:p", "denied": 1, "shadow": 0},
        {"key": "user:s", "denied": 3, "shadow": 5},
    ]
    for table in (*ROLLUP_TABLES.values(), *TENANT_ROLLUP_TABLES.values()):
        sums = query(
            socket,
            "SELECT sum(requests) AS requests, sum(allowed_requests) AS allowed, "
            "sum(denied_requests) AS denied, sum(shadow_denied_requests) AS shadow_denied "
            f"FROM {table} WHERE tenant = '{tenant}'",
        )
        assert sums == [{"requests": 8, "allowed": 7, "denied": 1, "shadow_denied": 3}], table
