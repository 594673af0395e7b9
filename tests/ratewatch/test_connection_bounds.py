"""What a real `ratewatch serve` does with slow, numerous and oversized clients, and who may
read its metrics (ratewatch/processes/http_protocol.py, control/routes/health.py)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from tests.support.credentials import create_key
from tests.support.polling import wait_until
from tests.support.raw_http import closed, connect, read_reply
from tests.support.servers import RatewatchProcess, RedisServer, start_limiter

pytestmark = pytest.mark.timeout(120)

PREFIX = "bounds"
METRICS_TOKEN = "metrics-" + secrets.token_hex(16)
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
SLACK = 2.0  # how much later than its timeout a cut may come on a busy machine


def health_request() -> bytes:
    return b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: its command counts are this module's servers'."""
    server = RedisServer(tmp_path_factory.mktemp("bounds-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def strict(
    own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RatewatchProcess]:
    """A limiter with short timeouts, small headers and a metrics token."""
    process = start_limiter(
        own_redis.url,
        tmp_path_factory.mktemp("strict"),
        "--key-prefix", PREFIX,
        "--header-timeout", str(HEADER_TIMEOUT),
        "--body-timeout", str(BODY_TIMEOUT),
        "--keep-alive-timeout", "1",
        "--max-header-bytes", "8192",
        env={"RATEWATCH_METRICS_TOKEN": METRICS_TOKEN},
    )  # fmt: skip
    yield process
    process.stop()


@pytest.fixture(scope="module")
def crowded(
    own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RatewatchProcess]:
    """A limiter that takes four connections, with kept-alive connections kept a while."""
    process = start_limiter(
        own_redis.url,
        tmp_path_factory.mktemp("crowded"),
        "--key-prefix", PREFIX,
        "--max-connections", "4",
        "--keep-alive-timeout", "60",
    )  # fmt: skip
    yield process
    process.stop()


@pytest.fixture
def admin(own_redis: RedisServer, tenant: str) -> str:
    return create_key(own_redis.url, tenant, admin=True, prefix=PREFIX)


def test_a_client_slow_to_send_its_headers_is_cut_with_408_within_the_timeout(
    strict: RatewatchProcess,
) -> None:
    with connect(strict) as sock:
        sock.sendall(b"POST /v1/check HTTP/1.1\r\nHost: test\r\nContent-Type: app")
        started = time.monotonic()
        reply = read_reply(sock)
        elapsed = time.monotonic() - started
        assert reply.status == 408
        problem = reply.problem()
        assert problem["type"] == "urn:ratewatch:problem:request-timeout"
        assert problem["timeout"] == HEADER_TIMEOUT
        assert HEADER_TIMEOUT - 0.1 <= elapsed < HEADER_TIMEOUT + SLACK
        assert closed(sock)


def test_a_connection_that_sends_nothing_is_cut_after_the_header_timeout(
    strict: RatewatchProcess,
) -> None:
    with connect(strict) as sock:
        started = time.monotonic()
        reply = read_reply(sock)
        assert reply.status == 408
        assert time.monotonic() - started < HEADER_TIMEOUT + SLACK
        assert closed(sock)


@pytest.mark.parametrize("path", ["/v1/check", "/v1/keys"])
def test_a_client_slow_to_send_its_body_is_cut_with_408_within_the_timeout(
    strict: RatewatchProcess, admin: str, path: str
) -> None:
    """The check path (raw ASGI) and the control plane (Starlette) alike."""
    with connect(strict) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {admin}\r\n"
            "Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n{".encode()
        )
        started = time.monotonic()
        reply = read_reply(sock)
        elapsed = time.monotonic() - started
        assert reply.status == 408
        problem = reply.problem()
        assert problem["type"] == "urn:ratewatch:problem:request-timeout"
        assert problem["instance"] == path
        assert "body" in str(problem["detail"])
        assert BODY_TIMEOUT - 0.1 <= elapsed < BODY_TIMEOUT + SLACK
        assert closed(sock)
    # the server goes on answering
    assert httpx.get(strict.base_url + "/health", timeout=5).status_code == 200


def test_requests_within_the_timeouts_are_answered_and_an_idle_connection_is_closed(
    strict: RatewatchProcess, admin: str
) -> None:
    body = json.dumps({"key": "k", "limit": 5, "window": 60}).encode()
    with connect(strict) as sock:
        for _ in range(3):  # a kept-alive connection, the body sent in two parts
            sock.sendall(
                f"POST /v1/check HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {admin}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[:5]
            )
            time.sleep(0.3)  # a slow client, well within the body timeout
            sock.sendall(body[5:])
            reply = read_reply(sock)
            assert reply.status == 200, reply.body
        started = time.monotonic()
        assert closed(sock), "an idle connection was answered instead of closed"
        assert time.monotonic() - started < 1 + SLACK  # the keep-alive timeout


def test_a_connection_busy_longer_than_the_keep_alive_timeout_stays_open(
    strict: RatewatchProcess, admin: str
) -> None:
    # the keep-alive timeout runs on the connection's one timer, which fires once per
    # timeout: a request in each gap shorter than it keeps the connection open
    body = json.dumps({"key": "busy", "limit": 50, "window": 60}).encode()
    request = (
        f"POST /v1/check HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {admin}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with connect(strict) as sock:
        started = time.monotonic()
        while time.monotonic() - started < 2.5:  # 2.5 keep-alive timeouts
            sock.sendall(request)
            assert read_reply(sock).status == 200
            time.sleep(0.4)  # a gap shorter than the keep-alive timeout (1 s)
        assert closed(sock), "an idle connection was answered instead of closed"


def test_headers_past_the_bound_are_refused_with_431(strict: RatewatchProcess) -> None:
    with connect(strict) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Padding: " + b"a" * 20000)
        reply = read_reply(sock)
        assert reply.status == 431
        assert reply.problem()["max_bytes"] == 8192
        assert closed(sock)


def key_lookups(url: str, requests: Callable[[], None]) -> list[str]:
    """The commands that read an API key's record while ``requests`` run (MONITOR: the
    limiter's background refreshes make GETs of their own, which a count would include)."""
    marker = "end-" + secrets.token_hex(8)
    seen: list[str] = []
    with Redis.from_url(url) as redis, redis.monitor() as monitor:
        requests()
        with Redis.from_url(url) as other:
            other.echo(marker)
        for command in monitor.listen():
            if marker in command["command"]:
                break
            seen.append(command["command"])
    return [command for command in seen if ":auth:" in command]


def test_a_token_longer_than_any_key_is_refused_without_a_lookup(
    strict: RatewatchProcess, own_redis: RedisServer
) -> None:
    check = {"key": "k", "limit": 5, "window": 60}
    with httpx.Client(base_url=strict.base_url) as http:

        def too_long() -> None:
            for length in (257, 4000):
                answer = http.post(
                    "/v1/check", json=check, headers={"Authorization": "Bearer " + "k" * length}
                )
                assert answer.status_code == 401
                assert answer.headers["content-type"] == "application/problem+json"
                assert f"{length} characters" in answer.json()["detail"]

        assert key_lookups(own_redis.url, too_long) == [], "a token no key can be was looked up"

        # the same reading does see a lookup: an unknown token of a key's length is one
        def key_length() -> None:
            answer = http.post(
                "/v1/check", json=check, headers={"Authorization": "Bearer " + "k" * 256}
            )
            assert answer.status_code == 401

        assert len(key_lookups(own_redis.url, key_length)) == 1


def test_metrics_and_detailed_health_need_the_token_when_one_is_set(
    strict: RatewatchProcess,
) -> None:
    with httpx.Client(base_url=strict.base_url, timeout=10) as http:
        for path in ("/metrics", "/health/detailed"):
            for headers in ({}, {"Authorization": "Bearer wrong-" + METRICS_TOKEN}):
                answer = http.get(path, headers=headers)
                assert answer.status_code == 401, path
                assert answer.headers["content-type"] == "application/problem+json"
                assert answer.headers["www-authenticate"].startswith("Bearer")
            answer = http.get(path, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
            assert answer.status_code == 200, path
        assert http.get("/health").status_code == 200  # always open


def test_without_a_token_metrics_stay_open(crowded: RatewatchProcess) -> None:
    with httpx.Client(base_url=crowded.base_url, timeout=10) as http:
        assert http.get("/metrics").status_code == 200
        assert http.get("/health/detailed").status_code == 200


def test_requests_on_connections_beyond_the_bound_get_503(crowded: RatewatchProcess) -> None:
    held = [connect(crowded) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(health_request())
            assert read_reply(sock).status == 200
        with connect(crowded) as extra:
            extra.sendall(health_request())
            reply = read_reply(extra)
            assert reply.status == 503
            assert reply.problem()["type"] == "urn:ratewatch:problem:too-many-connections"
            assert reply.headers["retry-after"]
            assert closed(extra)
        for sock in held:  # the connections within the bound are still served
            sock.sendall(health_request())
            assert read_reply(sock).status == 200
        held.pop().close()

        def served() -> bool:
            with connect(crowded) as sock:
                sock.sendall(health_request())
                return read_reply(sock).status == 200

        wait_until(served, 10, "a connection served once one of the four closed", 0.1)
    finally:
        for sock in held:
            sock.close()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def send_huge_token(server: RatewatchProcess, size: int) -> None:
    """A check with a bearer token of ``size`` bytes; the answer (if any gets through
    before the server closes) is a 4xx."""
    with connect(server) as sock:
        try:
            sock.sendall(
                b"POST /v1/check HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer "
                + secrets.token_hex(size // 2).encode()
                + b"\r\nContent-Length: 2\r\n\r\n{}"
            )
            assert 400 <= read_reply(sock).status < 500
        except (ConnectionResetError, BrokenPipeError):
            pass  # cut while it was still sending: what a bound on headers does


def test_memory_does_not_grow_with_huge_tokens(own_redis: RedisServer, tmp_path: Path) -> None:
    """Old behaviour: every token was cached, 1,000 tokens of 60 KB held 60 MB for good."""
    server = start_limiter(own_redis.url, tmp_path, "--key-prefix", PREFIX)
    try:
        assert server.process is not None
        pid = server.process.pid
        check = {"key": "k", "limit": 5, "window": 60}

        def flood(tokens: int, megabyte_tokens: int) -> None:
            with httpx.Client(base_url=server.base_url, timeout=30) as http:
                for _ in range(tokens):  # under the header bound: refused as keys
                    token = secrets.token_hex(30_000)
                    answer = http.post(
                        "/v1/check", json=check, headers={"Authorization": f"Bearer {token}"}
                    )
                    assert answer.status_code == 401
            for _ in range(megabyte_tokens):  # past the header bound: cut
                send_huge_token(server, 1 << 20)

        flood(100, 5)  # the allocator's and the interpreter's steady state
        before = rss_bytes(pid)
        flood(1000, 40)
        grown = rss_bytes(pid) - before
        assert grown < 20 << 20, f"RSS grew by {grown / 2**20:.1f} MiB"
    finally:
        server.stop()
