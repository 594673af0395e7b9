"""The Python SDK by policy: the clients, the ASGI middleware and the WSGI adapters, against
the session's real `ratewatch serve`."""

from __future__ import annotations

import httpx
import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratewatch import AsyncRateWatch, RateLimitMiddleware, RateWatch
from ratewatch.client import Check
from ratewatch.wsgi.flask import RateWatchFlask
from tests.support.servers import RatewatchProcess


@pytest.fixture
def policy(api: httpx.Client) -> str:
    body = {"limits": [{"limit": 2, "window": 600}, {"limit": 100, "window": 3600}]}
    assert api.put("/v1/policies/sdk", json=body).status_code == 201
    return "sdk"


def test_the_client_checks_and_batches_by_policy(
    limiter: RatewatchProcess, admin_key: str, policy: str
) -> None:
    with RateWatch(admin_key, limiter.base_url, fail_open=False) as rw:
        results = [rw.check("u1", policy=policy) for _ in range(3)]
        assert [(r.allowed, r.limit) for r in results] == [(True, 2), (True, 2), (False, 2)]
        batch = rw.batch([{"key": "u2", "policy": policy}, Check("u3", 5, 60)])
        assert [r.allowed for r in batch] == [True, True]
    with pytest.raises(ValueError, match="limit and window, or a policy"):
        Check("k")
    with pytest.raises(ValueError, match="not both"):
        Check("k", 1, 1, policy=policy)


def test_a_client_that_fails_open_by_policy_reports_no_windows() -> None:
    with RateWatch("rwk_x", "http://127.0.0.1:9", fail_open=True) as rw:
        result = rw.check("k", policy="free")
    assert (result.allowed, result.limit, result.remaining) == (True, 0, 0)


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def test_the_asgi_middleware_limits_by_policy(
    limiter: RatewatchProcess, admin_key: str, policy: str
) -> None:
    async with AsyncRateWatch(admin_key, limiter.base_url, fail_open=False) as rw:
        assert (await rw.check("a1", policy=policy)).limit == 2
        app = Starlette(routes=[Route("/hello", hello)])
        app.add_middleware(RateLimitMiddleware, client=rw, policy=policy)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            answers = [await http.get("/hello") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].headers["ratelimit-policy"] == f'"{policy}";q=2'
    assert answers[0].headers["ratelimit"].startswith(f'"{policy}";r=1;t=')
    assert f"policy {policy} exceeded" in answers[2].json()["detail"]
    with pytest.raises(ValueError, match="or a policy"):
        RateLimitMiddleware(app, client=rw, limit=1, window=1, policy=policy)


def test_flask_takes_a_policy_from_its_settings_and_per_view(
    limiter: RatewatchProcess, admin_key: str, policy: str
) -> None:
    app = Flask("policies")
    app.config["RATEWATCH"] = {
        "api_key": admin_key, "url": limiter.base_url, "policy": policy, "key": "header:X-User"
    }  # fmt: skip
    extension = RateWatchFlask(app)

    @app.get("/hello")
    def flask_hello() -> str:
        return "hello"

    @app.get("/view")
    @extension.limit(policy=policy, key=lambda environ: "view-user")
    def flask_view() -> str:
        return "view"

    try:
        http = app.test_client()
        statuses = [http.get("/hello", headers={"X-User": "f"}).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        denied = http.get("/hello", headers={"X-User": "f"})
        assert denied.headers["RateLimit-Policy"] == f'"{policy}";q=2'
        # no X-User: the app-wide limit lets it through; the view's own policy counts
        assert [http.get("/view").status_code for _ in range(3)] == [200, 200, 429]
    finally:
        extension.close()
