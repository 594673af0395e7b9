"""Signed keys through a real `ratewatch serve`: the check routes and the control plane
refuse a signed key's request without a valid, fresh signature, and nothing changes for
keys that are not signed.

The signatures here are computed from the scheme as docs/security.md states it (not with
the SDK's signer), so the server is checked against the documentation."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.credentials import create_signed_key
from tests.support.openapi import assert_published_shape
from tests.support.paths import REPO
from tests.support.servers import RatewatchProcess, RedisServer

PROBLEM = "application/problem+json"
CHECK = {"key": "user:1", "limit": 10, "window": 60}


def signed_headers(
    secret: str, method: str, target: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """RateWatch-Timestamp and RateWatch-Signature as docs/security.md defines them."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    message = f"{ts}\n{method}\n{target}\n{hashlib.sha256(body).hexdigest()}"
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return {"RateWatch-Timestamp": ts, "RateWatch-Signature": f"v1={digest}"}


class Signed:
    """An HTTP client of the limiter with a signed key, signing (or not) request by request."""

    def __init__(self, limiter: RatewatchProcess, api_key: str, secret: str):
        self.secret = secret
        self.http = httpx.Client(
            base_url=limiter.base_url, timeout=10, headers={"Authorization": f"Bearer {api_key}"}
        )

    def send(
        self,
        method: str,
        target: str,
        payload: Any = None,
        *,
        sign: bool = True,
        signed_as: tuple[str, str, bytes] | None = None,
        timestamp: int | None = None,
    ) -> httpx.Response:
        """``method target`` with ``payload`` as JSON; signed as that request, or as
        ``signed_as`` (method, target, body) to send one thing signed as another."""
        body = b"" if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        if sign:
            what = signed_as or (method, target, body)
            headers |= signed_headers(self.secret, *what, timestamp=timestamp)
        return self.http.request(method, target, content=body, headers=headers)


@pytest.fixture
def signed(limiter: RatewatchProcess, redis_server: RedisServer, tenant: str) -> Iterator[Signed]:
    """A signed admin key of the test's tenant."""
    api_key, secret = create_signed_key(redis_server.url, tenant, admin=True)
    client = Signed(limiter, api_key, secret)
    yield client
    client.http.close()


def assert_401(response: httpx.Response, kind: str) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["www-authenticate"].startswith("Bearer")
    problem: dict[str, Any] = response.json()
    assert problem["type"] == f"urn:ratewatch:problem:{kind}"
    assert problem["status"] == 401
    assert problem["title"]
    assert problem["detail"]
    return problem


BLOCK = {"scope": "ip", "value": "198.51.100.9", "ttl": 60, "reason": "signed test"}
ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/check", CHECK),
    ("POST", "/v1/batch", {"checks": [CHECK, {**CHECK, "key": "user:2"}]}),
    ("GET", "/v1/blocks", None),
    ("GET", "/v1/blocks?scope=ip", None),
    ("POST", "/v1/blocks", BLOCK),
]


@pytest.mark.parametrize(("method", "target", "payload"), ROUTES)
def test_a_signed_key_without_a_signature_is_401(
    signed: Signed, method: str, target: str, payload: Any
) -> None:
    assert_401(signed.send(method, target, payload, sign=False), "signature-missing")


@pytest.mark.parametrize(("method", "target", "payload"), ROUTES)
def test_a_signed_request_is_served(signed: Signed, method: str, target: str, payload: Any) -> None:
    response = signed.send(method, target, payload)
    assert response.status_code in (200, 201), response.text
    if target == "/v1/check":
        assert response.json()["allowed"] is True
        assert response.headers["ratelimit-policy"] == '"default";q=10;w=60'
    if target == "/v1/batch":
        assert [r["allowed"] for r in response.json()["results"]] == [True, True]


def test_a_signed_control_request_acts_once(signed: Signed) -> None:
    """The body the signature covers is the body the route reads."""
    created = signed.send("POST", "/v1/blocks", BLOCK)
    assert created.status_code == 201, created.text
    listed = signed.send("GET", "/v1/blocks").json()["blocks"]
    assert [(b["scope"], b["value"], b["reason"]) for b in listed] == [
        ("ip", "198.51.100.9", "signed test")
    ]


def test_a_tampered_request_is_401(signed: Signed) -> None:
    body = json.dumps(CHECK).encode()
    other = json.dumps({**CHECK, "cost": 5}).encode()
    batch = json.dumps({"checks": [CHECK]}).encode()
    cases: list[tuple[str, str, Any, tuple[str, str, bytes]]] = [
        # another body than the one signed
        ("POST", "/v1/check", {**CHECK, "cost": 5}, ("POST", "/v1/check", body)),
        # the same body to another path, or another query
        ("POST", "/v1/batch", {"checks": [CHECK]}, ("POST", "/v1/check", batch)),
        ("GET", "/v1/blocks?scope=key", None, ("GET", "/v1/blocks?scope=ip", b"")),
        ("GET", "/v1/blocks?scope=ip", None, ("GET", "/v1/blocks", b"")),
        # another method
        ("GET", "/v1/blocks", None, ("DELETE", "/v1/blocks", b"")),
        ("POST", "/v1/check", {**CHECK, "cost": 5}, ("POST", "/v1/check", other + b" ")),
    ]
    for method, target, payload, signed_as in cases:
        assert_401(signed.send(method, target, payload, signed_as=signed_as), "signature-invalid")


def test_a_signature_made_with_another_secret_or_malformed_is_401(signed: Signed) -> None:
    body = json.dumps(CHECK).encode()
    headers = {"Content-Type": "application/json"}
    wrong = signed_headers("rws_" + "A" * 43, "POST", "/v1/check", body)
    assert_401(
        signed.http.post("/v1/check", content=body, headers=headers | wrong), "signature-invalid"
    )
    good = signed_headers(signed.secret, "POST", "/v1/check", body)
    digest = good["RateWatch-Signature"].removeprefix("v1=")
    for value in (digest, f"v2={digest}", "v1=", f"v1={digest[:-1]}", "garbage"):
        bad = headers | good | {"RateWatch-Signature": value}
        assert_401(signed.http.post("/v1/check", content=body, headers=bad), "signature-invalid")
    for timestamp in ("-5", "soon", "1e9", "12345678901234"):
        bad = headers | good | {"RateWatch-Timestamp": timestamp}
        assert_401(signed.http.post("/v1/check", content=body, headers=bad), "signature-invalid")
    # one matching entry among several is enough (as during a change of signer)
    both = f"v1={'0' * 64}, {good['RateWatch-Signature']}"
    several = headers | good | {"RateWatch-Signature": both}
    assert signed.http.post("/v1/check", content=body, headers=several).status_code == 200
    # the hex digits' case does not matter
    upper = headers | good | {"RateWatch-Signature": "v1=" + digest.upper()}
    assert signed.http.post("/v1/check", content=body, headers=upper).status_code == 200


def test_a_stale_or_future_timestamp_is_401(signed: Signed) -> None:
    now = int(time.time())
    for timestamp in (now - 330, now + 330, 0):
        for method, target, payload in (ROUTES[0], ROUTES[2]):
            problem = assert_401(
                signed.send(method, target, payload, timestamp=timestamp), "signature-stale"
            )
            assert abs(problem["server_time"] - time.time()) < 30
    # within the window either way: accepted (clocks need not agree to the second)
    for timestamp in (now - 240, now + 240):
        assert signed.send("POST", "/v1/check", CHECK, timestamp=timestamp).status_code == 200


def test_keys_that_are_not_signed_are_unaffected(api: httpx.Client, signed: Signed) -> None:
    """An unsigned key needs no signature, and signature headers, even wrong ones, change
    nothing for it."""
    assert api.post("/v1/check", json=CHECK).status_code == 200
    junk = {"RateWatch-Timestamp": "0", "RateWatch-Signature": "v1=" + "0" * 64}
    assert api.post("/v1/check", json=CHECK, headers=junk).status_code == 200
    assert api.post("/v1/batch", json={"checks": [CHECK]}, headers=junk).status_code == 200
    assert api.get("/v1/blocks", headers=junk).status_code == 200
    # both keys count against the tenant's same counters
    signed_result = signed.send("POST", "/v1/check", CHECK).json()
    assert signed_result["remaining"] == 10 - 4


def test_the_keys_api_creates_a_signed_key_and_shows_its_secret_once(
    api: httpx.Client, limiter: RatewatchProcess
) -> None:
    created = api.post("/v1/keys", json={"name": "signer", "signed": True})
    assert created.status_code == 201, created.text
    body = created.json()
    assert_published_shape(api, body, "KeyCreated")
    assert body["signed"] is True
    assert body["signing_secret"].startswith("rws_")
    assert len(body["signing_secret"]) == 4 + 43
    listed = api.get("/v1/keys").json()
    assert_published_shape(api, listed, "KeyList")
    entry = next(k for k in listed["keys"] if k["id"] == body["id"])
    assert entry["signed"] is True
    assert body["signing_secret"] not in json.dumps(listed)
    plain = api.post("/v1/keys", json={"name": "plain"}).json()
    assert plain["signed"] is False
    assert "signing_secret" not in plain

    client = Signed(limiter, body["key"], body["signing_secret"])
    try:
        assert_401(client.send("POST", "/v1/check", CHECK, sign=False), "signature-missing")
        assert client.send("POST", "/v1/check", CHECK).status_code == 200
        # a signed standard key is still a standard key: admin routes answer 403 once signed
        assert client.send("GET", "/v1/keys").status_code == 403
    finally:
        client.http.close()
    assert api.post("/v1/keys", json={"signed": "yes"}).status_code == 422


def test_the_documented_client_example_is_served(
    limiter: RatewatchProcess, signed: Signed, redis_server: RedisServer, tenant: str
) -> None:
    """docs/security.md's ten-line client, run as written."""
    text = (REPO / "docs" / "security.md").read_text()
    section = text.split("## Signed requests", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in code.splitlines() if line.strip()]) <= 10, code
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/security.md", "exec"), namespace)
    api_key, secret = create_signed_key(redis_server.url, tenant)
    response = namespace["signed_post"](limiter.base_url, "/v1/check", CHECK, api_key, secret)
    assert response.status_code == 200, response.text
    assert response.json()["remaining"] == 9
    wrong = namespace["signed_post"](limiter.base_url, "/v1/check", CHECK, api_key, "rws_no")
    assert_401(wrong, "signature-invalid")
