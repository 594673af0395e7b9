"""The Python SDK and its ASGI middleware against a real `ratewatch serve`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratewatch import (
    FAIL_OPEN_REASON,
    AsyncRateWatch,
    AuthenticationError,
    Check,
    CheckResult,
    InvalidRequest,
    RateLimitMiddleware,
    RateWatch,
    RateWatchError,
    ServiceUnavailable,
)
from tests.support.servers import RatewatchProcess

RESULT_FIELDS = {"allowed", "remaining", "reset_in", "retry_after", "limit", "reason"}


@pytest.fixture
def client(limiter: RatewatchProcess, standard_key: str) -> Iterator[RateWatch]:
    with RateWatch(standard_key, limiter.base_url, fail_open=False) as rw:
        yield rw


def peek(api: httpx.Client, key: str, limit: int, window: int) -> dict[str, Any]:
    body: dict[str, Any] = api.post(
        "/v1/check", json={"key": key, "limit": limit, "window": window, "cost": 0}
    ).json()
    return body


# --- the sync client ---------------------------------------------------------------------


def test_check_result_mirrors_the_api(client: RateWatch, api: httpx.Client) -> None:
    result = client.check("mirror", limit=5, window=600)
    assert isinstance(result, CheckResult)
    assert {f.name for f in dataclasses.fields(CheckResult)} == RESULT_FIELDS
    raw = peek(api, "mirror", 5, 600)  # the same counter, read through the raw API
    assert set(raw) == RESULT_FIELDS
    assert (
        (result.allowed, result.remaining, result.limit, result.reason)
        == (raw["allowed"], raw["remaining"], raw["limit"], raw["reason"])
        == (True, 4, 5, "ok")
    )
    assert result.retry_after is None
    assert abs(result.reset_in - raw["reset_in"]) <= 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.allowed = False  # type: ignore[misc]


def test_allowed_then_denied(client: RateWatch) -> None:
    results = [
        client.check(
            "seq",
            limit=3,
            window=600,
            algorithm="fixed_window",
            ip="203.0.113.7",
            route="/orders",
            user_agent="pytest",
            user_id="u1",
        )
        for _ in range(5)
    ]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert [r.remaining for r in results] == [2, 1, 0, 0, 0]
    assert all(r.reason == "ok" and r.retry_after is None for r in results[:3])
    denied = results[3]
    assert denied.reason == "limit"
    assert denied.retry_after is not None
    assert 1 <= denied.retry_after <= 600
    assert 0 < denied.reset_in <= 600


def test_cost_exceeding_the_limit_is_denied_without_retry(client: RateWatch) -> None:
    result = client.check("big", limit=2, window=60, cost=3)
    assert (result.allowed, result.reason, result.retry_after) == (
        False,
        "cost_exceeds_limit",
        None,
    )


def test_batch_answers_in_order_from_dicts_and_checks(client: RateWatch, api: httpx.Client) -> None:
    results = client.batch(
        [
            {"key": "b1", "limit": 2, "window": 600},
            Check("b1", limit=2, window=600),
            {"key": "b1", "limit": 2, "window": 600, "algorithm": "sliding_window"},
            Check("b2", limit=10, window=600, cost=4, ip="2001:db8::1", route="/x"),
        ]
    )
    assert [(r.allowed, r.remaining, r.limit) for r in results] == [
        (True, 1, 2),
        (True, 0, 2),
        (False, 0, 2),
        (True, 6, 10),
    ]
    assert results[2].reason == "limit"
    assert results[2].retry_after is not None
    raw = api.post(
        "/v1/batch",
        json={
            "checks": [
                {"key": "b1", "limit": 2, "window": 600, "cost": 0},
                {"key": "b2", "limit": 10, "window": 600, "cost": 0},
            ]
        },
    ).json()["results"]
    assert [(r["remaining"], r["limit"]) for r in raw] == [(0, 2), (6, 10)]
    assert client.batch([]) == []


def test_a_bad_key_raises_authentication_error(limiter: RatewatchProcess) -> None:
    with RateWatch("rwk_not-a-real-key", limiter.base_url) as rw:
        with pytest.raises(AuthenticationError) as info:
            rw.check("k", limit=1, window=1)
        assert info.value.status == 401
        assert info.value.problem["type"] == "urn:ratewatch:problem:unauthorized"
        with pytest.raises(AuthenticationError):
            rw.batch([Check("k", 1, 1)])


def test_an_invalid_limit_raises_invalid_request_with_the_problem(
    limiter: RatewatchProcess,
    standard_key: str,
) -> None:
    # fail_open=True must not hide the caller's own mistakes
    with RateWatch(standard_key, limiter.base_url, fail_open=True) as rw:
        with pytest.raises(InvalidRequest) as info:
            rw.check("k", limit=-1, window=60)
        error = info.value
        assert error.status == 422
        assert error.problem["type"] == "urn:ratewatch:problem:validation-error"
        assert error.problem["status"] == 422
        assert error.detail is not None
        assert "$.limit" in error.detail
        assert "$.limit" in str(error)
        with pytest.raises(InvalidRequest, match=r"\$\.checks\[1\]"):
            rw.batch([Check("k", 1, 60), Check("k", 1, 60, ip="not-an-ip")])


def test_settings_come_from_the_environment(
    limiter: RatewatchProcess, standard_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RATEWATCH_API_KEY", standard_key)
    monkeypatch.setenv("RATEWATCH_URL", limiter.base_url + "/")
    with RateWatch() as rw:
        assert rw.base_url == limiter.base_url
        assert rw.check("env", limit=1, window=60).allowed is True
    monkeypatch.delenv("RATEWATCH_API_KEY")
    with pytest.raises(ValueError, match="RATEWATCH_API_KEY"):
        RateWatch(base_url=limiter.base_url)


# --- failing open or closed --------------------------------------------------------------


def test_fail_open_allows_when_the_service_is_unreachable(closed_url: str) -> None:
    with RateWatch("rwk_any", closed_url, fail_open=True) as rw:
        result = rw.check("k", limit=10, window=60, cost=3)
        assert result == CheckResult(
            allowed=True,
            remaining=7,
            reset_in=60,
            retry_after=None,
            limit=10,
            reason=FAIL_OPEN_REASON,
        )
        results = rw.batch([Check("a", 5, 30), {"key": "b", "limit": 1, "window": 9}])
        assert [(r.allowed, r.remaining, r.reason) for r in results] == [
            (True, 4, "client_fail_open"),
            (True, 0, "client_fail_open"),
        ]


def test_fail_closed_raises_service_unavailable(closed_url: str) -> None:
    with RateWatch("rwk_any", closed_url, fail_open=False) as rw:
        with pytest.raises(ServiceUnavailable, match="did not answer") as info:
            rw.check("k", limit=10, window=60)
        assert info.value.status is None
        with pytest.raises(ServiceUnavailable):
            rw.batch([Check("k", 10, 60)])


def test_a_timeout_fails_open_or_closed(silent_url: str) -> None:
    with RateWatch("rwk_any", silent_url, timeout=0.1, fail_open=True) as rw:
        assert rw.check("k", limit=1, window=1).reason == FAIL_OPEN_REASON
    with (
        RateWatch("rwk_any", silent_url, timeout=0.1, fail_open=False) as rw,
        pytest.raises(ServiceUnavailable, match="Timeout"),
    ):
        rw.check("k", limit=1, window=1)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(
            503,
            json={
                "type": "urn:ratewatch:problem:store-unavailable",
                "title": "The limiter's store is unavailable",
                "status": 503,
            },
        ),
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.Response(200, text="not json"),
        httpx.Response(200, json={"allowed": "yes"}),
    ],
)
def test_5xx_and_garbage_answers_count_as_unavailable(response: httpx.Response) -> None:
    transport = httpx.MockTransport(lambda request: response)
    with RateWatch("rwk_any", "http://rw.invalid", fail_open=True, transport=transport) as rw:
        assert rw.check("k", limit=2, window=5).reason == FAIL_OPEN_REASON
    with (
        RateWatch("rwk_any", "http://rw.invalid", fail_open=False, transport=transport) as rw,
        pytest.raises(ServiceUnavailable),
    ):
        rw.check("k", limit=2, window=5)


def test_other_statuses_raise_the_base_error() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(404))
    with RateWatch("rwk_any", "http://rw.invalid", transport=transport) as rw:
        with pytest.raises(RateWatchError, match="404") as info:
            rw.check("k", limit=2, window=5)
        assert type(info.value) is RateWatchError


# --- the async client --------------------------------------------------------------------


async def test_async_client_checks_and_batches(
    limiter: RatewatchProcess, standard_key: str
) -> None:
    async with AsyncRateWatch(standard_key, limiter.base_url, fail_open=False) as rw:
        first = await rw.check("async", limit=2, window=600)
        assert (first.allowed, first.remaining, first.reason) == (True, 1, "ok")
        results = await rw.batch(
            [Check("async", 2, 600), {"key": "async", "limit": 2, "window": 600}]
        )
        assert [r.allowed for r in results] == [True, False]
        assert results[1].retry_after is not None
        with pytest.raises(InvalidRequest):
            await rw.check("async", limit=-1, window=600)
    async with AsyncRateWatch("rwk_wrong", limiter.base_url) as rw:
        with pytest.raises(AuthenticationError):
            await rw.check("async", limit=2, window=600)


async def test_async_client_fails_open_or_closed(closed_url: str) -> None:
    async with AsyncRateWatch("rwk_any", closed_url) as rw:
        assert (await rw.check("k", limit=3, window=10)).reason == FAIL_OPEN_REASON
        assert [r.reason for r in await rw.batch([Check("k", 3, 10)])] == [FAIL_OPEN_REASON]
    rw = AsyncRateWatch("rwk_any", closed_url, fail_open=False)
    try:
        with pytest.raises(ServiceUnavailable):
            await rw.check("k", limit=3, window=10)
    finally:
        await rw.close()


# --- the middleware ----------------------------------------------------------------------


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def make_app(client: AsyncRateWatch, **options: Any) -> Starlette:
    app = Starlette(routes=[Route("/hello", hello), Route("/health", hello)])
    app.add_middleware(RateLimitMiddleware, client=client, **options)
    return app


def asgi_client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_middleware_allows_the_limit_then_answers_429(
    limiter: RatewatchProcess, standard_key: str
) -> None:
    async with AsyncRateWatch(standard_key, limiter.base_url, fail_open=False) as rw:
        app = make_app(rw, limit=3, window=600)
        async with asgi_client(app) as http:
            allowed = [await http.get("/hello", headers={"user-agent": "pytest"}) for _ in range(3)]
            denied = await http.get("/hello")
        # the middleware's key is the client IP, counted in the tenant's namespace
        after = await rw.check("ip:127.0.0.1", limit=3, window=600, cost=0)
    for remaining, response in zip([2, 1, 0], allowed, strict=True):
        assert response.status_code == 200
        assert response.text == "hello"
        assert response.headers["ratelimit-policy"] == '"default";q=3;w=600'
        assert response.headers["ratelimit"].startswith(f'"default";r={remaining};t=')
        assert "retry-after" not in response.headers
    assert denied.status_code == 429
    assert denied.headers["content-type"] == "application/problem+json"
    problem = denied.json()
    assert problem["status"] == 429
    assert problem["type"] == "urn:ratewatch:problem:rate-limited"
    assert problem["reason"] == "limit"
    retry_after = int(denied.headers["retry-after"])
    assert 1 <= retry_after <= 2 * 600  # a sliding window may need up to two windows
    assert problem["retry_after"] == retry_after
    assert denied.headers["ratelimit-policy"] == '"default";q=3;w=600'
    assert denied.headers["ratelimit"].startswith('"default";r=0;t=')
    assert (after.allowed, after.remaining) == (True, 0)


async def test_middleware_key_function_and_skipping(
    limiter: RatewatchProcess, standard_key: str
) -> None:
    def key(scope: Any) -> str | None:
        return None if scope["path"] == "/health" else "user:" + scope["path"]

    async with AsyncRateWatch(standard_key, limiter.base_url, fail_open=False) as rw:
        app = make_app(rw, limit=1, window=600, key=key, cost=1, algorithm="token_bucket")
        async with asgi_client(app) as http:
            assert (await http.get("/hello")).status_code == 200
            assert (await http.get("/hello")).status_code == 429
            for _ in range(3):
                health = await http.get("/health")
                assert health.status_code == 200
                assert "ratelimit" not in health.headers


async def test_middleware_when_the_service_is_down(closed_url: str) -> None:
    async with (
        AsyncRateWatch("rwk_any", closed_url, fail_open=True) as rw,
        asgi_client(make_app(rw, limit=1, window=60)) as http,
    ):
        for _ in range(3):  # nothing is counted: every request passes, without headers
            response = await http.get("/hello")
            assert response.status_code == 200
            assert "ratelimit" not in response.headers
    async with (
        AsyncRateWatch("rwk_any", closed_url, fail_open=False) as rw,
        asgi_client(make_app(rw, limit=1, window=60)) as http,
    ):
        response = await http.get("/hello")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"


async def test_middleware_passes_other_scopes_through(closed_url: str) -> None:
    seen: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    async def receive() -> dict[str, Any]:
        raise AssertionError("not read")

    async def send(message: Any) -> None:
        raise AssertionError("not sent")

    # a fail-closed client of a dead service: any check would end in a 503
    scopes = [
        {"type": kind, "path": "/ws", "client": ("127.0.0.1", 5000)}
        for kind in ("lifespan", "websocket")
    ]
    async with AsyncRateWatch("rwk_any", closed_url, fail_open=False) as rw:
        middleware = RateLimitMiddleware(inner, client=rw, limit=1, window=1)
        for scope in scopes:
            await middleware(scope, receive, send)
    assert seen == scopes
