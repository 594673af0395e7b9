"""Keys, tenancy, blocks and bad input through a real `ratewatch serve`."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.bad_input import BAD_CHECKS
from tests.support.credentials import create_key
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, RedisServer

PROBLEM = "application/problem+json"


def client(limiter: RatewatchProcess, api_key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=limiter.base_url, headers=headers, timeout=10)


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert str(body["type"]).startswith("urn:ratewatch:problem:")
    assert body["title"]
    assert body["detail"]
    return body


CHECK = {"key": "k", "limit": 10, "window": 60}


@pytest.mark.parametrize(
    "authorization", [None, "Bearer", "Bearer nope", "Basic abc", "Bearer rwk_" + "x" * 43]
)
def test_missing_or_invalid_key_is_401(anon: httpx.Client, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for path in ("/v1/check", "/v1/batch", "/v1/blocks", "/v1/keys"):
        response = anon.post(path, json=CHECK, headers=headers)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_standard_key_is_forbidden_on_admin_routes(
    limiter: RatewatchProcess, standard_key: str
) -> None:
    with client(limiter, standard_key) as api:
        assert api.post("/v1/check", json=CHECK).status_code == 200
        assert api.get("/v1/blocks").status_code == 200
        assert_problem(api.get("/v1/keys"), 403)
        assert_problem(api.post("/v1/keys", json={}), 403)
        assert_problem(api.delete("/v1/keys/key_whatever"), 403)
        assert_problem(
            api.post("/v1/blocks", json={"scope": "ip", "value": "1.2.3.4", "ttl": 60}), 403
        )
        assert_problem(api.delete("/v1/blocks/blk_whatever"), 403)
        assert_problem(api.get("/v1/settings"), 403)


def test_admin_creates_lists_and_revokes_keys(api: httpx.Client, limiter: RatewatchProcess) -> None:
    created = api.post("/v1/keys", json={"name": "ci", "admin": False})
    assert created.status_code == 201
    body = created.json()
    new_key, key_id = body["key"], body["id"]
    assert new_key.startswith("rwk_")
    assert len(new_key) >= 4 + 43
    listed = api.get("/v1/keys").json()["keys"]
    assert key_id in [k["id"] for k in listed]
    assert all("key" not in k and "hash" not in k for k in listed)
    with client(limiter, new_key) as new_client:
        assert new_client.post("/v1/check", json=CHECK).status_code == 200
        assert api.delete(f"/v1/keys/{key_id}").status_code == 200
        # revocation takes effect within a second, on every limiter instance
        started = time.monotonic()
        wait_until(
            lambda: new_client.post("/v1/check", json=CHECK).status_code == 401,
            3,
            "the revoked key to be refused",
        )
        assert time.monotonic() - started <= 1.5
    assert_problem(api.delete(f"/v1/keys/{key_id}"), 404)


def test_tenants_cannot_see_or_touch_each_other(
    api: httpx.Client, limiter: RatewatchProcess, redis_server: RedisServer, tenant: str
) -> None:
    other_admin = create_key(redis_server.url, tenant + "-b", admin=True)
    block = api.post(
        "/v1/blocks", json={"scope": "ip", "value": "10.1.2.3", "ttl": 600, "reason": "test"}
    ).json()
    my_key_id = api.get("/v1/keys").json()["keys"][0]["id"]
    with client(limiter, other_admin) as other:
        assert other.get("/v1/blocks").json()["blocks"] == []
        assert_problem(other.delete(f"/v1/blocks/{block['id']}"), 404)
        assert all(k["id"] != my_key_id for k in other.get("/v1/keys").json()["keys"])
        assert_problem(other.delete(f"/v1/keys/{my_key_id}"), 404)
        # the other tenant's checks are not blocked by this tenant's block
        assert other.post("/v1/check", json={**CHECK, "ip": "10.1.2.3"}).json()["allowed"]
    assert [b["id"] for b in api.get("/v1/blocks").json()["blocks"]] == [block["id"]]
    assert api.post("/v1/check", json=CHECK).status_code == 200


@pytest.mark.parametrize(
    ("scope", "value", "field"),
    [
        ("ip", "203.0.113.9", {"ip": "203.0.113.9"}),
        ("ip", "2001:db8::1", {"ip": "2001:DB8:0::1"}),
        ("key", "user:9", {"key": "user:9"}),
        ("user_id", "u-9", {"user_id": "u-9"}),
    ],
)
def test_manual_block_is_enforced_and_lifted(
    api: httpx.Client, scope: str, value: str, field: dict[str, str]
) -> None:
    request = {**CHECK, **field}
    assert api.post("/v1/check", json=request).json()["allowed"] is True
    created = api.post(
        "/v1/blocks", json={"scope": scope, "value": value, "ttl": 120, "reason": "abuse report"}
    )
    assert created.status_code == 201
    block = created.json()
    assert (block["scope"], block["mode"], block["source"]) == (scope, "enforce", "manual")
    assert block["expires_at"] - block["created_at"] == pytest.approx(120, abs=1)
    denied = api.post("/v1/check", json=request)
    body = denied.json()
    assert (body["allowed"], body["reason"]) == (False, "blocked")
    assert 118 <= body["retry_after"] <= 120
    assert denied.headers["retry-after"] == str(body["retry_after"])
    listed = api.get("/v1/blocks").json()["blocks"]
    assert [b["id"] for b in listed] == [block["id"]]
    assert set(listed[0]) >= {
        "id",
        "scope",
        "value",
        "reason",
        "detector",
        "score",
        "created_at",
        "expires_at",
        "mode",
    }
    assert api.delete(f"/v1/blocks/{block['id']}").status_code == 200
    assert api.post("/v1/check", json=request).json()["allowed"] is True
    assert api.get("/v1/blocks").json()["blocks"] == []


def test_shadow_block_is_listed_but_not_enforced(api: httpx.Client) -> None:
    api.post("/v1/blocks", json={"scope": "key", "value": "shadowed", "ttl": 60, "mode": "shadow"})
    assert api.post("/v1/check", json={**CHECK, "key": "shadowed"}).json()["allowed"]
    assert api.get("/v1/blocks").json()["blocks"][0]["mode"] == "shadow"


def test_removing_one_of_two_blocks_keeps_the_other_enforced(api: httpx.Client) -> None:
    spec = {"scope": "key", "value": "twice", "reason": "x"}
    long_block = api.post("/v1/blocks", json={**spec, "ttl": 600}).json()
    short_block = api.post("/v1/blocks", json={**spec, "ttl": 60}).json()
    assert api.delete(f"/v1/blocks/{long_block['id']}").status_code == 200
    body = api.post("/v1/check", json={**CHECK, "key": "twice"}).json()
    assert (body["allowed"], body["reason"]) == (False, "blocked")
    assert body["retry_after"] <= 60
    assert api.delete(f"/v1/blocks/{short_block['id']}").status_code == 200
    assert api.post("/v1/check", json={**CHECK, "key": "twice"}).json()["allowed"]


@pytest.mark.parametrize(("body", "status"), BAD_CHECKS)
def test_bad_check_input_is_a_problem_not_a_500(
    api: httpx.Client, body: object, status: int
) -> None:
    assert_problem(api.post("/v1/check", json=body), status)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"{'key': 1}",
        b"\xff\xfe",
        b"[" * 10_000,
        b'{"key": "k", "limit": 1e400, "window": 60}',
    ],
)
def test_malformed_json_is_400_or_422(api: httpx.Client, raw: bytes) -> None:
    response = api.post("/v1/check", content=raw)
    assert response.status_code in (400, 422)
    assert_problem(response, response.status_code)


def test_unicode_keys_are_fine(api: httpx.Client) -> None:
    for key in ("usér:ü", "用户:123", "emoji:🙂", "tab\tand\nnewline", "{braces}:x"):
        body = api.post("/v1/check", json={"key": key, "limit": 1, "window": 60}).json()
        assert body["allowed"] is True
        assert (
            api.post("/v1/check", json={"key": key, "limit": 1, "window": 60}).json()["allowed"]
            is False
        )


def test_oversized_bodies_are_413(api: httpx.Client) -> None:
    big = {"key": "k", "limit": 1, "window": 60, "route": "r" * 100_000}
    assert_problem(api.post("/v1/check", json=big), 413)
    huge_batch = {"checks": [{"key": "k" * 500, "limit": 1, "window": 60}] * 5000}
    assert_problem(api.post("/v1/batch", json=huge_batch), 413)
    assert_problem(api.post("/v1/keys", json={"name": "n" * 100_000}), 413)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"scope": "ip", "value": "not-an-ip", "ttl": 60}, 422),
        ({"scope": "planet", "value": "x", "ttl": 60}, 422),
        ({"scope": "key", "value": "x", "ttl": 0}, 422),
        ({"scope": "key", "value": "x", "ttl": 10**9}, 422),
        ({"scope": "key", "value": "x", "ttl": 60, "mode": "loud"}, 422),
        ({"scope": "key", "ttl": 60}, 422),
    ],
)
def test_bad_block_input_is_a_problem(api: httpx.Client, body: object, status: int) -> None:
    assert_problem(api.post("/v1/blocks", json=body), status)


def test_unknown_routes_and_methods_are_problems(api: httpx.Client) -> None:
    assert_problem(api.get("/v1/nothing"), 404)
    assert_problem(api.put("/v1/blocks", json={}), 405)
    assert_problem(api.delete("/v1/blocks/blk_missing"), 404)


def test_tenant_fail_mode_setting(api: httpx.Client) -> None:
    assert api.get("/v1/settings").json()["fail_mode"] is None
    assert api.patch("/v1/settings", json={"fail_mode": "closed"}).json()["fail_mode"] == "closed"
    assert_problem(api.patch("/v1/settings", json={"fail_mode": "sideways"}), 422)
    assert api.get("/v1/settings").json()["fail_mode"] == "closed"
