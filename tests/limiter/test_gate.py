"""``/v1/gate`` asked directly, as a proxy would, against the session's `ratewatch serve`
(which trusts no proxy: ``X-Forwarded-For`` is not believed there)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.credentials import create_signed_key
from tests.support.servers import RatewatchProcess, RedisServer


@pytest.fixture
def gate(limiter: RatewatchProcess, standard_key: str) -> Iterator[httpx.Client]:
    """A client of the gate, authenticated with the tenant's (standard) key as a proxy
    sends it."""
    with httpx.Client(
        base_url=limiter.base_url, timeout=10, headers={"X-RateWatch-Key": standard_key}
    ) as client:
        yield client


def test_allowed_until_the_limit_then_429_with_retry_after_and_ratelimit_headers(
    gate: httpx.Client,
) -> None:
    options = {"X-RateWatch-Identifier": "user:1", "X-RateWatch-Limit": "2",
               "X-RateWatch-Window": "60"}  # fmt: skip
    answers = [gate.get("/v1/gate", headers=options) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].json()["remaining"] == 1
    assert answers[0].headers["ratelimit-policy"] == '"default";q=2;w=60'
    assert answers[1].headers["ratelimit"].startswith('"default";r=0;t=')
    denied = answers[2]
    assert denied.headers["content-type"] == "application/problem+json"
    assert denied.json()["type"] == "urn:ratewatch:problem:rate-limited"
    assert denied.json()["reason"] == "limit"
    # a sliding window may take up to two windows to let one more through
    assert 1 <= int(denied.headers["retry-after"]) <= 120
    assert denied.json()["retry_after"] == int(denied.headers["retry-after"])
    assert denied.headers["ratelimit"].startswith('"default";r=0;t=')
    # POST, as some proxies ask, decides the same counter
    assert gate.post("/v1/gate", headers=options).status_code == 429


def test_a_policy_from_the_query_wins_over_a_header_a_client_could_have_sent(
    api: httpx.Client, gate: httpx.Client
) -> None:
    assert api.put("/v1/policies/free", json={"limits": [{"limit": 1, "window": 60}]}).is_success
    assert api.put("/v1/policies/rich", json={"limits": [{"limit": 99, "window": 60}]}).is_success
    headers = {"X-RateWatch-Identifier": "acct:7", "X-RateWatch-Policy": "rich",
               "X-RateWatch-Limit": "1000", "X-RateWatch-Window": "1"}  # fmt: skip
    first = gate.get("/v1/gate?policy=free&deny_status=403", headers=headers)
    assert first.status_code == 200, first.text
    assert first.headers["ratelimit-policy"] == '"free";q=1;w=60'
    second = gate.get("/v1/gate?policy=free&deny_status=403", headers=headers)
    assert second.status_code == 403
    assert second.json()["type"] == "urn:ratewatch:problem:rate-limited"
    assert "retry-after" in second.headers
    # the header alone names the policy when the URL does not; limit/window are not read
    by_header = gate.get("/v1/gate", headers=headers)
    assert by_header.status_code == 200
    assert by_header.headers["ratelimit-policy"] == '"rich";q=99;w=60'


def test_without_an_identifier_the_client_address_is_limited_and_an_untrusted_peer_s_x_forwarded_for_is_ignored(  # noqa: E501
    gate: httpx.Client,
) -> None:
    options = {"X-RateWatch-Limit": "2", "X-RateWatch-Window": "60"}
    statuses = [
        gate.get("/v1/gate", headers={**options, "X-Forwarded-For": f"198.51.100.{n}",
                                      "X-Real-IP": f"203.0.113.{n}"}).status_code
        for n in range(3)
    ]  # fmt: skip
    # three "different" clients are one: the peer, 127.0.0.1, is not a trusted proxy
    assert statuses == [200, 200, 429]


def test_envoy_s_form_any_method_under_the_gate_path(gate: httpx.Client) -> None:
    headers = {"X-RateWatch-Identifier": "e", "X-RateWatch-Limit": "1", "X-RateWatch-Window": "9"}
    assert gate.request("DELETE", "/v1/gate/orders/42?limit=1000", headers=headers).is_success
    # the query under /v1/gate/… is the original request's: it sets nothing
    assert gate.put("/v1/gate/orders/42?limit=1000", headers=headers).status_code == 429
    assert gate.head("/v1/gate", headers=headers).status_code == 429
    # any path a client may send stays a route, never a server error
    odd = gate.get("/v1/gate/%E6%97%A5%E6%9C%AC/%FF" + "x" * 5000, headers=headers)
    assert odd.status_code == 429
    long = {**headers, "User-Agent": "u" * 5000, "X-Original-URI": b"/p\xe9\xff" * 3000}
    assert gate.get("/v1/gate", headers=long).status_code == 429


@pytest.mark.parametrize(
    ("query", "headers", "status", "kind"),
    [
        ("", {"X-RateWatch-Identifier": "k"}, 422, "validation-error"),
        ("?limit=abc&window=60", {"X-RateWatch-Identifier": "k"}, 422, "validation-error"),
        ("?limit=5&window=0", {"X-RateWatch-Identifier": "k"}, 422, "validation-error"),
        ("?limit=5&window=60", {"X-RateWatch-Identifier": "k" * 600}, 422, "validation-error"),
        ("?limit=5&window=60&deny_status=500", {}, 422, "validation-error"),
        ("?limit=5&window=60&key=secret", {}, 422, "validation-error"),
        ("?policy=nope", {"X-RateWatch-Identifier": "k"}, 422, "unknown-policy"),
        ("?policy=bad%20name", {"X-RateWatch-Identifier": "k"}, 422, "unknown-policy"),
    ],
)
def test_bad_options_are_a_problem_naming_the_option(
    gate: httpx.Client, query: str, headers: dict[str, str], status: int, kind: str
) -> None:
    answer = gate.get("/v1/gate" + query, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == f"urn:ratewatch:problem:{kind}"


def test_without_a_valid_unsigned_key_the_gate_answers_401(
    limiter: RatewatchProcess, redis_server: RedisServer, tenant: str, standard_key: str
) -> None:
    query = "/v1/gate?limit=5&window=60"
    url = limiter.base_url + query
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"X-RateWatch-Key": "rwk_nope"}).status_code == 401
    # the Authorization header does as well as X-RateWatch-Key
    bearer = httpx.get(url, headers={"Authorization": f"Bearer {standard_key}"})
    assert bearer.status_code == 200
    signed, _ = create_signed_key(redis_server.url, tenant)
    refused = httpx.get(url, headers={"X-RateWatch-Key": signed})
    assert refused.status_code == 401
    assert "signed key" in refused.json()["detail"]


def test_a_shadow_policy_lets_everything_through_and_a_block_denies_at_once(
    api: httpx.Client, gate: httpx.Client
) -> None:
    shadow = {"limits": [{"limit": 1, "window": 60}], "mode": "shadow"}
    assert api.put("/v1/policies/trial", json=shadow).is_success
    headers = {"X-RateWatch-Identifier": "s"}
    assert [gate.get("/v1/gate?policy=trial", headers=headers).status_code
            for _ in range(3)] == [200, 200, 200]  # fmt: skip
    # a block of the identifier is enforced by the gate like by /v1/check
    block = {"scope": "key", "value": "s", "ttl": 60, "reason": "test"}
    assert api.post("/v1/blocks", json=block).status_code == 201
    blocked = gate.get("/v1/gate?policy=trial", headers=headers)
    assert blocked.status_code == 429
    assert blocked.json()["reason"] == "blocked"
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
