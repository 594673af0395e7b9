"""The WSGI middleware and its Flask and Django adapters against a real `ratewatch serve`.

Flask apps are driven through werkzeug's test client and Django through its own, both of
which run the real WSGI stack; one app is served by a `wsgiref` server thread and called
over HTTP.  Django's settings are process-wide, so this module configures them once and
each test overrides ``RATEWATCH``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import django
import httpx
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.urls import path
from flask import Flask

from ratewatch import RateWatch
from ratewatch.wsgi import RateLimitWSGIMiddleware, header_key
from ratewatch.wsgi.flask import RateWatchFlask
from tests.support.servers import RatewatchProcess

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="not-secret",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["ratewatch.wsgi.django.RateWatchMiddleware"],
        INSTALLED_APPS=[],
        USE_TZ=True,
        RATEWATCH={},
    )
    django.setup()

from django.test import Client as DjangoClient
from django.test import override_settings

pytestmark = pytest.mark.timeout(60)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"
PROBLEM = "application/problem+json"


def django_hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello")


urlpatterns = [path("hello", django_hello), path("health", django_hello)]


@pytest.fixture
def rw(limiter: RatewatchProcess, standard_key: str) -> Iterator[RateWatch]:
    with RateWatch(standard_key, limiter.base_url, fail_open=False) as client:
        yield client


def flask_app(**options: Any) -> Flask:
    app = Flask(__name__)
    app.add_url_rule("/hello", "hello", lambda: "hello")
    app.add_url_rule("/health", "health", lambda: "ok")
    app.add_url_rule("/login", "login", lambda: "welcome")
    RateWatchFlask(app, **options)
    return app


def hello_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(app: WSGIApplication) -> Iterator[str]:
    """Serve ``app`` with wsgiref's server in a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def assert_ratelimit_headers(headers: Any, limit: int, window: int, remaining: int) -> None:
    assert headers["RateLimit-Policy"] == f'"default";q={limit};w={window}'
    assert headers["RateLimit"].startswith(f'"default";r={remaining};t=')
    reset_in = int(headers["RateLimit"].rsplit("t=", 1)[1])
    assert 0 < reset_in <= window


def assert_denied(status: int, headers: Any, body: bytes, limit: int, window: int) -> None:
    assert status == 429
    assert headers["Content-Type"] == PROBLEM
    problem = json.loads(body)
    assert problem["status"] == 429
    assert problem["type"] == "urn:ratewatch:problem:rate-limited"
    assert problem["reason"] == "limit"
    retry_after = int(headers["Retry-After"])
    assert 1 <= retry_after <= 2 * window  # a sliding window may need up to two windows
    assert problem["retry_after"] == retry_after
    assert_ratelimit_headers(headers, limit, window, 0)


def assert_unavailable(status: int, headers: Any, body: bytes) -> None:
    assert status == 503
    assert headers["Content-Type"] == PROBLEM
    assert headers["Retry-After"] == "1"
    assert json.loads(body)["type"] == "urn:ratewatch:problem:service-unavailable"
    assert "RateLimit" not in headers


# --- Flask ---------------------------------------------------------------------------------


def test_flask_allows_the_limit_then_answers_429(rw: RateWatch) -> None:
    http = flask_app(client=rw, limit=3, window=600).test_client()
    allowed = [http.get("/hello", headers={"User-Agent": "pytest"}) for _ in range(3)]
    denied = http.get("/hello")
    for remaining, response in zip([2, 1, 0], allowed, strict=True):
        assert (response.status_code, response.text) == (200, "hello")
        assert_ratelimit_headers(response.headers, 3, 600, remaining)
        assert "Retry-After" not in response.headers
    assert_denied(denied.status_code, denied.headers, denied.data, 3, 600)
    # the key is the client IP, counted in the tenant's namespace
    after = rw.check("ip:127.0.0.1", limit=3, window=600, cost=0)
    assert (after.allowed, after.remaining) == (True, 0)


def test_flask_keys_by_api_key_header(rw: RateWatch) -> None:
    http = flask_app(client=rw, limit=1, window=600, key="header:X-API-Key").test_client()
    assert http.get("/hello", headers={"X-API-Key": "alpha"}).status_code == 200
    assert http.get("/hello", headers={"X-API-Key": "alpha"}).status_code == 429
    assert http.get("/hello", headers={"X-API-Key": "beta"}).status_code == 200
    for _ in range(3):  # no key: not checked
        response = http.get("/hello")
        assert response.status_code == 200
        assert "RateLimit" not in response.headers
    # the header's value is counted hashed, never sent as it is
    hashed = header_key("X-API-Key")({"HTTP_X_API_KEY": "alpha"})
    assert hashed is not None
    assert re.fullmatch(r"apikey:[0-9a-f]{32}", hashed)
    assert rw.check(hashed, limit=1, window=600, cost=0).remaining == 0
    assert rw.check("apikey:alpha", limit=1, window=600, cost=0).remaining == 1


def test_flask_keys_by_a_function_with_per_route_limits(rw: RateWatch) -> None:
    def key(environ: Any) -> str | None:
        user = environ.get("HTTP_X_USER")
        return None if user is None else f"user:{user}:{environ['PATH_INFO']}"

    def limits(environ: Any) -> tuple[int, int] | None:
        return (1, 300) if environ["PATH_INFO"] == "/login" else None

    http = flask_app(client=rw, limit=2, window=600, key=key, limits=limits).test_client()
    headers = {"X-User": "u1"}
    login = [http.get("/login", headers=headers) for _ in range(2)]
    hello = [http.get("/hello", headers=headers) for _ in range(3)]
    assert [r.status_code for r in login] == [200, 429]
    assert_ratelimit_headers(login[0].headers, 1, 300, 0)
    assert_denied(login[1].status_code, login[1].headers, login[1].data, 1, 300)
    assert [r.status_code for r in hello] == [200, 200, 429]
    assert_ratelimit_headers(hello[1].headers, 2, 600, 0)
    assert http.get("/hello", headers={"X-User": "u2"}).status_code == 200
    assert http.get("/hello").status_code == 200  # key None: through


def test_flask_excluded_paths_are_untouched(rw: RateWatch) -> None:
    http = flask_app(client=rw, limit=1, window=600, exclude=["/health", "/static/*"]).test_client()
    for _ in range(3):
        health = http.get("/health")
        assert (health.status_code, health.text) == (200, "ok")
        assert "RateLimit" not in health.headers
        assert http.get("/static/app.css").status_code == 404  # the app's own answer
    assert http.get("/hello").status_code == 200
    assert http.get("/hello").status_code == 429
    assert rw.check("ip:127.0.0.1", limit=1, window=600, cost=0).remaining == 0


def test_forwarded_for_counts_only_when_proxies_are_trusted(rw: RateWatch) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.9, 10.0.0.1"}
    untrusted = flask_app(client=rw, limit=5, window=600).test_client()
    trusted = flask_app(client=rw, limit=5, window=600, trust_proxies=True).test_client()
    untrusted.get("/hello", headers=forwarded)
    trusted.get("/hello", headers=forwarded)
    trusted.get("/hello", headers={"X-Forwarded-For": "not-an-ip"})  # falls back
    assert rw.check("ip:127.0.0.1", limit=5, window=600, cost=0).remaining == 3
    assert rw.check("ip:203.0.113.9", limit=5, window=600, cost=0).remaining == 4


def test_flask_reads_its_settings_from_app_config(
    limiter: RatewatchProcess, standard_key: str
) -> None:
    app = Flask(__name__)
    app.add_url_rule("/hello", "hello", lambda: "hello")
    app.config["RATEWATCH"] = {
        "API_KEY": standard_key,
        "URL": limiter.base_url,
        "LIMIT": 1,
        "WINDOW": 600,
    }
    extension = RateWatchFlask()
    extension.init_app(app)
    try:
        http = app.test_client()
        assert http.get("/hello").status_code == 200
        assert http.get("/hello").status_code == 429
    finally:
        extension.close()


def test_a_flask_view_with_a_limit_of_its_own(rw: RateWatch) -> None:
    app = Flask(__name__)
    ratewatch = RateWatchFlask(app, client=rw, limit=10, window=600)

    @app.post("/login")
    @ratewatch.limit(2, 60)
    def login() -> str:
        return "welcome"

    app.add_url_rule("/hello", "hello", lambda: "hello")
    http = app.test_client()
    logins = [http.post("/login") for _ in range(3)]
    hello = http.get("/hello")
    assert [r.status_code for r in logins] == [200, 200, 429]
    assert logins[0].text == "welcome"
    assert_ratelimit_headers(logins[1].headers, 2, 60, 0)  # the view's, not the app's
    assert_denied(logins[2].status_code, logins[2].headers, logins[2].data, 2, 60)
    # every request counts app-wide once; the view's counter is apart
    assert_ratelimit_headers(hello.headers, 10, 600, 6)
    assert rw.check("ip:127.0.0.1|view:login", limit=2, window=60, cost=0).remaining == 0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"LIMIT": 0, "WINDOW": 60}, "limit must be a positive integer, not 0"),
        ({"LIMIT": 5}, "window is required"),
        ({"LIMIT": 5, "WINDOW": 60, "KEY": "cookie"}, "not 'cookie'"),
        ({"LIMIT": 5, "WINDOW": 60, "KEY": "nowhere.key"}, "'nowhere.key' cannot be imported"),
        ({"LIMIT": 5, "WINDOW": 60, "EXCLUDE": ["health"]}, "not 'health'"),
        ({"LIMIT": 5, "WINDOW": 60, "TIMEOUT": "fast"}, "timeout must be"),
        ({"LIMIT": 5, "WINDOW": 60, "WINDOWS": 1}, "unknown setting(s) windows"),
    ],
)
def test_flask_names_a_bad_setting(bad: dict[str, Any], message: str) -> None:
    app = Flask(__name__)
    app.config["RATEWATCH"] = bad
    with pytest.raises(ValueError, match=re.escape(message)):
        RateWatchFlask(app, api_key="rwk_unused")


def test_the_apps_own_ratelimit_headers_are_kept(rw: RateWatch) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("ratelimit", "mine")])
        return [b"own"]

    wrapped = RateLimitWSGIMiddleware(app, client=rw, limit=5, window=600)
    with serve(wrapped) as url:
        response = httpx.get(url + "/x", timeout=10)
    assert response.headers.get_list("RateLimit") == ["mine"]
    assert response.headers["RateLimit-Policy"] == '"default";q=5;w=600'


# --- failures of RateWatch -----------------------------------------------------------------


@pytest.mark.parametrize("url_fixture", ["closed_url", "silent_url"])
def test_fail_open_when_ratewatch_is_down_or_slow(
    url_fixture: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(url_fixture)
    with RateWatch("rwk_any", url, timeout=0.2) as client:
        http = flask_app(client=client, limit=1, window=60).test_client()
        for _ in range(3):  # nothing is counted: every request passes, without headers
            response = http.get("/hello")
            assert (response.status_code, response.text) == (200, "hello")
            assert "RateLimit" not in response.headers
        closed = flask_app(client=client, limit=1, window=60, fail_open=False).test_client()
        response = closed.get("/hello")
    assert_unavailable(response.status_code, response.headers, response.data)


def test_a_refused_check_never_breaks_the_app(limiter: RatewatchProcess) -> None:
    with RateWatch("rwk_revoked", limiter.base_url, fail_open=False) as client:
        http = flask_app(client=client, limit=1, window=60).test_client()
        for _ in range(2):
            assert http.get("/hello").status_code == 200
        closed = flask_app(client=client, limit=1, window=60, fail_open=False).test_client()
        response = closed.get("/hello")
    assert_unavailable(response.status_code, response.headers, response.data)


# --- Django --------------------------------------------------------------------------------


def test_django_middleware_from_settings(rw: RateWatch) -> None:
    config = {"CLIENT": rw, "LIMIT": 2, "WINDOW": 600, "EXCLUDE": ["/health"]}
    with override_settings(RATEWATCH=config):
        http = DjangoClient()
        responses = [http.get("/hello") for _ in range(3)]
        health = [http.get("/health") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].content == b"hello"
    assert_ratelimit_headers(responses[0].headers, 2, 600, 1)
    denied = responses[2]
    assert_denied(denied.status_code, denied.headers, denied.content, 2, 600)
    assert all(r.status_code == 200 and "RateLimit" not in r.headers for r in health)
    assert rw.check("ip:127.0.0.1", limit=2, window=600, cost=0).remaining == 0


def test_django_keys_by_header_and_fails_open_or_closed(rw: RateWatch, closed_url: str) -> None:
    config = {"CLIENT": rw, "LIMIT": 1, "WINDOW": 600, "KEY": "header:Authorization"}
    with override_settings(RATEWATCH=config):
        http = DjangoClient()
        first = http.get("/hello", headers={"Authorization": "Bearer a"})
        second = http.get("/hello", headers={"Authorization": "Bearer a"})
        other = http.get("/hello", headers={"Authorization": "Bearer b"})
    assert [first.status_code, second.status_code, other.status_code] == [200, 429, 200]
    down = {"API_KEY": "rwk_any", "URL": closed_url, "LIMIT": 1, "WINDOW": 60}
    with override_settings(RATEWATCH=down):
        http = DjangoClient()
        passed = [http.get("/hello") for _ in range(2)]
    assert all(r.status_code == 200 and "RateLimit" not in r.headers for r in passed)
    with override_settings(RATEWATCH={**down, "FAIL_OPEN": False}):
        response = DjangoClient().get("/hello")
    assert_unavailable(response.status_code, response.headers, response.content)


def test_django_names_a_bad_setting() -> None:
    for bad, message in [
        (None, "RATEWATCH must be a dict of settings, not None"),
        ({"API_KEY": "rwk_x", "LIMIT": 5, "WINDOW": -1}, "window must be a positive integer"),
    ]:
        with (
            override_settings(RATEWATCH=bad),
            pytest.raises(ImproperlyConfigured, match=re.escape(message)),
        ):
            DjangoClient().get("/hello")


# --- a real WSGI server, and the documentation's examples ----------------------------------


def test_a_wsgiref_server_over_http(rw: RateWatch) -> None:
    app = RateLimitWSGIMiddleware(hello_app, client=rw, limit=2, window=600, exclude=["/health"])
    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        responses = [http.get("/hello") for _ in range(3)]
        health = http.get("/health")
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[1].text == "hello"
    assert_ratelimit_headers(responses[1].headers, 2, 600, 0)
    denied = responses[2]
    assert_denied(denied.status_code, denied.headers, denied.content, 2, 600)
    assert health.status_code == 200
    assert "RateLimit" not in health.headers


def wsgi_examples() -> list[str]:
    """The Python blocks of docs/sdk.md's WSGI section, in order."""
    text = DOCS.read_text()
    section = text.split("## WSGI middleware", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def run(example: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(compile(example, "docs/sdk.md", "exec"), namespace)
    return namespace


def test_the_documented_examples_run(
    limiter: RatewatchProcess, standard_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RATEWATCH_API_KEY", standard_key)
    monkeypatch.setenv("RATEWATCH_URL", limiter.base_url)
    plain, flask, django_settings = wsgi_examples()

    namespace = run(plain)
    try:
        with serve(namespace["application"]) as url, httpx.Client(base_url=url) as http:
            response = http.get("/hello")
            health = http.get("/health")
    finally:
        namespace["limiter"].close()
    assert (response.status_code, response.text) == (200, "hello")
    assert_ratelimit_headers(response.headers, 100, 60, 99)
    assert "RateLimit" not in health.headers

    namespace = run(flask)
    try:
        http = namespace["app"].test_client()
        response = http.get("/hello")
        login = http.post("/login")
    finally:
        namespace["ratewatch"].close()
    assert (response.status_code, response.text) == (200, "hello")
    assert_ratelimit_headers(response.headers, 100, 60, 98)  # the same IP, the same window
    assert (login.status_code, login.text) == (200, "welcome")
    assert_ratelimit_headers(login.headers, 5, 60, 4)

    configured = run(django_settings)
    assert configured["MIDDLEWARE"][0] == "ratewatch.wsgi.django.RateWatchMiddleware"
    config = {**configured["RATEWATCH"], "URL": limiter.base_url}
    with override_settings(RATEWATCH=config, MIDDLEWARE=configured["MIDDLEWARE"]):
        http = DjangoClient()
        keyed = [http.get("/hello", headers={"X-API-Key": "k1"}) for _ in range(2)]
        health = http.get("/health", headers={"X-API-Key": "k1"})
    assert [r.status_code for r in keyed] == [200, 200]
    assert_ratelimit_headers(keyed[1].headers, 100, 60, 98)
    assert "RateLimit" not in health.headers
