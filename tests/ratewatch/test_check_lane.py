"""The check lane of a real `ratewatch serve` (limiter/http/lane.py, its cycle in
ratewatch/processes/lane_cycle.py): checks and batches of cached keys answered without a
task each, in order with whatever else a connection asks, as uvicorn answers the rest."""

from __future__ import annotations

import json
import re
import socket
import time

import httpx
import pytest

from tests.support.polling import wait_until
from tests.support.raw_http import Replies, connect
from tests.support.servers import RatewatchProcess

pytestmark = pytest.mark.timeout(60)


def post(path: str, key: str, body: bytes, *extra: str, version: str = "1.1") -> bytes:
    head = [f"POST {path} HTTP/{version}", "Host: test", f"Authorization: Bearer {key}"]
    head += [*extra, f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(head).encode() + body


def check_body(key: str, limit: int = 3, **fields: object) -> bytes:
    return json.dumps({"key": key, "limit": limit, "window": 60, **fields}).encode()


@pytest.fixture
def key(limiter: RatewatchProcess, standard_key: str) -> str:
    """The test tenant's key, already in the limiter's cache: its checks take the lane."""
    answer = httpx.post(
        limiter.base_url + "/v1/check",
        headers={"Authorization": f"Bearer {standard_key}"},
        json={"key": "warm-up", "limit": 10, "window": 60},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return standard_key


def test_pipelined_checks_and_other_requests_are_answered_in_order(
    limiter: RatewatchProcess, key: str
) -> None:
    batch = json.dumps(
        {"checks": [{"key": "b", "limit": 1, "window": 60}, {"key": "b", "limit": 1, "window": 60}]}
    ).encode()
    requests = [
        post("/v1/check", key, check_body("p")),
        b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n",
        post("/v1/check", key, check_body("p")),
        post("/v1/batch", key, batch),
        post("/v1/check", key, b'{"key": "p"'),
        post("/v1/check", key, check_body("p")),
        post("/v1/check", key, check_body("p")),
    ]
    with connect(limiter) as sock:
        sock.sendall(b"".join(requests))  # all at once: parsed in one read
        replies = Replies(sock)
        answers = [replies.next() for _ in requests]
    statuses = [status for status, _, _ in answers]
    assert statuses == [200, 200, 200, 200, 400, 200, 200]
    assert json.loads(answers[1][2]) == {"status": "ok"}
    remaining = [json.loads(answers[i][2])["remaining"] for i in (0, 2, 5)]
    assert remaining == [2, 1, 0]  # decided in the order sent
    assert json.loads(answers[6][2])["allowed"] is False
    assert answers[6][1]["retry-after"].isdigit()
    assert [r["allowed"] for r in json.loads(answers[3][2])["results"]] == [True, False]
    problem = json.loads(answers[4][2])
    assert answers[4][1]["content-type"] == "application/problem+json"
    assert problem["type"] == "urn:ratewatch:problem:invalid-json"
    assert problem["instance"] == "/v1/check"


def test_an_answer_carries_the_headers_of_the_asgi_path(
    limiter: RatewatchProcess, key: str
) -> None:
    with connect(limiter) as sock:
        sock.sendall(post("/v1/check", key, check_body("h", limit=1)))
        sock.sendall(post("/v1/check", key, check_body("h", limit=1)))
        replies = Replies(sock)
        (status, allowed, _), (_, denied, body) = replies.next(), replies.next()
    assert status == 200
    assert allowed["content-type"] == "application/json"
    assert allowed["ratelimit-policy"] == '"default";q=1;w=60'
    assert re.fullmatch(r'"default";r=0;t=\d+', allowed["ratelimit"])
    assert "retry-after" not in allowed
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", allowed["date"])
    assert json.loads(body)["reason"] == "limit"
    assert int(denied["retry-after"]) >= 1


def test_connection_close_and_http_1_0_are_answered_then_closed(
    limiter: RatewatchProcess, key: str
) -> None:
    for request in (
        post("/v1/check", key, check_body("c"), "Connection: close"),
        post("/v1/check", key, check_body("c"), version="1.0"),
    ):
        with connect(limiter) as sock:
            sock.sendall(request)
            replies = Replies(sock)
            status, headers, _ = replies.next()
            assert status == 200
            assert headers["connection"] == "close"
            assert replies.closed()


def test_a_body_sent_in_pieces_is_decided_whole(limiter: RatewatchProcess, key: str) -> None:
    body = check_body("pieces", limit=5, route="/login")
    request = post("/v1/check", key, body)
    with connect(limiter) as sock:
        for at in range(0, len(request), 7):
            sock.sendall(request[at : at + 7])
        status, _, answer = Replies(sock).next()
    assert status == 200
    assert json.loads(answer)["remaining"] == 4


def test_a_policy_not_yet_in_the_copy_is_fetched_and_applied(
    limiter: RatewatchProcess, key: str, admin_key: str
) -> None:
    created = httpx.put(
        limiter.base_url + "/v1/policies/lane-fresh",
        headers={"Authorization": f"Bearer {admin_key}"},
        json={"limits": [{"limit": 1, "window": 60}, {"limit": 5, "window": 3600}]},
        timeout=10,
    )
    assert created.status_code in (200, 201), created.text
    body = json.dumps({"key": "pol", "policy": "lane-fresh"}).encode()
    with connect(limiter) as sock:
        # sent at once, before the copy's next reread can have seen the policy
        sock.sendall(post("/v1/check", key, body) + post("/v1/check", key, body))
        replies = Replies(sock)
        (first, headers, allowed), (_, _, denied) = replies.next(), replies.next()
    assert first == 200
    assert json.loads(allowed)["allowed"] is True
    assert json.loads(denied)["allowed"] is False
    assert headers["ratelimit-policy"].count(";w=") == 2


def test_a_check_naming_an_unknown_policy_gets_422(limiter: RatewatchProcess, key: str) -> None:
    with connect(limiter) as sock:
        sock.sendall(post("/v1/check", key, json.dumps({"key": "k", "policy": "none"}).encode()))
        status, _, body = Replies(sock).next()
    assert status == 422
    assert json.loads(body)["type"] == "urn:ratewatch:problem:unknown-policy"


def test_lane_decisions_are_counted_in_metrics(limiter: RatewatchProcess, key: str) -> None:
    def allowed_total() -> float:
        text = httpx.get(limiter.base_url + "/metrics", timeout=10).text
        pattern = r'^ratewatch_decisions_total\{[^}]*reason="ok"[^}]*\} (\S+)$'
        match = re.search(pattern, text, re.M)
        assert match is not None, text[:2000]
        return float(match.group(1))

    before = allowed_total()
    with connect(limiter) as sock:
        sock.sendall(b"".join(post("/v1/check", key, check_body(f"m{i}")) for i in range(25)))
        replies = Replies(sock)
        assert all(replies.next()[0] == 200 for _ in range(25))
    # the counts reach Prometheus once a second
    wait_until(lambda: allowed_total() >= before + 25, 10, "the lane's decisions counted")


def test_a_client_that_does_not_read_its_answers_holds_up_no_one_else(
    limiter: RatewatchProcess, key: str
) -> None:
    """The lane writes answers without awaiting the client; one that sends checks and never
    reads their answers fills its own buffers (the limiter stops reading from it once its
    answers back up), while others are answered."""
    with connect(limiter) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(2)
        sent = 0
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, f"{sent} unread answers and still reading"
            chunk = b"".join(
                post("/v1/check", key, check_body(f"unread{sent + i}", limit=10**6))
                for i in range(200)
            )
            try:
                sock.sendall(chunk)
            except TimeoutError:
                break  # the sockets' buffers are full
            sent += 200
        for other in range(3):
            answer = httpx.post(
                limiter.base_url + "/v1/check",
                headers={"Authorization": f"Bearer {key}"},
                json={"key": f"other{other}", "limit": 10, "window": 60},
                timeout=5,
            )
            assert answer.status_code == 200
            assert answer.json()["remaining"] == 9
