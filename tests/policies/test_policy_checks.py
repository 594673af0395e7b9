"""Checks by named policy through a real `ratewatch serve` on a real Redis."""

from __future__ import annotations

import time

import httpx
import jsonschema
import pytest

from tests.support.openapi import schema_of
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess


def put_policy(api: httpx.Client, name: str, **body: object) -> httpx.Response:
    return api.put(f"/v1/policies/{name}", json=body)


def check(api: httpx.Client, **body: object) -> httpx.Response:
    return api.post("/v1/check", json=body)


def test_a_policy_is_created_listed_read_and_checked_by_name(api: httpx.Client) -> None:
    created = put_policy(api, "free", limits=[{"limit": 3, "window": 60}])
    assert created.status_code == 201, created.text
    assert created.json()["limits"] == [{"limit": 3, "window": 60}]
    assert put_policy(api, "free", limits=[{"limit": 3, "window": 60}]).status_code == 200
    assert [p["name"] for p in api.get("/v1/policies").json()["policies"]] == ["free"]
    assert api.get("/v1/policies/free").json()["overrides"] == []
    answers = [check(api, key="user:1", policy="free") for _ in range(4)]
    assert [a.json()["allowed"] for a in answers] == [True, True, True, False]
    assert [a.json()["limit"] for a in answers] == [3, 3, 3, 3]
    assert answers[0].headers["ratelimit-policy"] == '"free";q=3;w=60'
    assert answers[3].headers["ratelimit"].startswith('"free";r=0;t=')
    # the policy's counter is the explicit check's with the same numbers
    same = check(api, key="user:1", limit=3, window=60).json()
    assert same["allowed"] is False


def test_the_detailed_health_reports_the_policies_copy(api: httpx.Client) -> None:
    assert put_policy(api, "health-copy", limits=[{"limit": 5, "window": 60}]).status_code in (
        200,
        201,
    )
    # the copy is reread every half second; a minute is the test's patience, not the bound
    copy: dict[str, object] = {}

    def holds_it() -> bool:
        detailed = api.get("/health/detailed").json()
        copy.update(detailed["dependencies"]["redis"]["policies_copy"])
        return isinstance(copy.get("policies"), int) and int(copy["policies"]) >= 1

    wait_until(holds_it, 60, "the policy in the limiter's copy", 0.1)
    tenants = copy["tenants"]
    assert isinstance(tenants, int)
    assert tenants >= 1
    assert copy["refreshed_at"] is not None


def test_two_windows_are_decided_at_once_and_the_answer_names_the_deciding_one(
    api: httpx.Client,
) -> None:
    limits = [{"limit": 3, "window": 60}, {"limit": 5, "window": 3600}]
    assert put_policy(api, "two", limits=limits, algorithm="fixed_window").status_code == 201
    # the five checks below must fall in one fixed minute: not in its last seconds
    wait_until(lambda: time.time() % 60 < 50, 15, "a minute with ten seconds to spare")
    first = check(api, key="u", policy="two")
    assert first.json() | {"reset_in": 0} == {
        "allowed": True, "remaining": 2, "reset_in": 0, "retry_after": None, "limit": 3,
        "reason": "ok",
    }  # fmt: skip
    assert first.headers["ratelimit-policy"] == '"two-60";q=3;w=60, "two-3600";q=5;w=3600'
    assert first.headers["ratelimit"].startswith('"two-60";r=2;')
    # the per-minute window denies: nothing is used in the hourly one either
    results = [check(api, key="u", policy="two").json() for _ in range(3)]
    assert [r["allowed"] for r in results] == [True, True, False]
    denied = check(api, key="u", policy="two")
    assert denied.json()["limit"] == 3
    assert 1 <= denied.json()["retry_after"] <= 60
    hourly = check(api, key="u", limit=5, window=3600, algorithm="fixed_window", cost=0).json()
    assert hourly["remaining"] == 2  # three used, the denied ones not


def test_the_longer_window_decides_once_it_is_the_one_that_denies(api: httpx.Client) -> None:
    limits = [{"limit": 100, "window": 1}, {"limit": 2, "window": 3600}]
    assert put_policy(api, "hourly", limits=limits, algorithm="fixed_window").status_code == 201
    results = [check(api, key="h", policy="hourly") for _ in range(3)]
    assert [r.json()["allowed"] for r in results] == [True, True, False]
    assert results[0].json()["limit"] == 2  # the window with the least remaining
    assert results[2].json()["limit"] == 2
    assert results[2].json()["retry_after"] > 1
    assert results[2].headers["ratelimit"].startswith('"hourly-3600";r=0;')


def test_batch_mixes_policies_and_explicit_checks(api: httpx.Client) -> None:
    assert put_policy(api, "b", limits=[{"limit": 1, "window": 60}]).status_code == 201
    body = {
        "checks": [
            {"key": "x", "policy": "b"},
            {"key": "x", "policy": "b"},
            {"key": "y", "limit": 5, "window": 60},
        ]
    }
    results = api.post("/v1/batch", json=body).json()["results"]
    assert [r["allowed"] for r in results] == [True, False, True]
    assert [r["limit"] for r in results] == [1, 1, 5]


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"key": "k", "policy": "nope"}, 422, "unknown-policy"),
        ({"key": "k", "policy": "p", "limit": 1, "window": 1}, 422, "validation-error"),
        ({"key": "k"}, 422, "validation-error"),
        ({"key": "k", "policy": "bad name"}, 422, "unknown-policy"),
        ({"key": "k", "policy": "x" * 65}, 422, "validation-error"),
    ],
)
def test_bad_policy_checks_are_problems(
    api: httpx.Client, body: dict[str, object], status: int, kind: str
) -> None:
    assert put_policy(api, "p", limits=[{"limit": 1, "window": 1}]).status_code == 201
    response = check(api, **body)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"].endswith(kind)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "$.limits"),
        ({"limits": []}, "$.limits"),
        ({"limits": [{"limit": 0, "window": 1}]}, "$.limits[0].limit"),
        ({"limits": [{"limit": 1, "window": 1}, {"limit": 2, "window": 1}]}, "$.limits[1].window"),
        ({"limits": [{"limit": 1, "window": 1}], "mode": "loud"}, "$.mode"),
        ({"limits": [{"limit": 1, "window": 1}], "algorithm": "x"}, "$.algorithm"),
        ({"limits": [{"limit": 1, "window": 1}], "extra": 1}, "$.extra"),
    ],
)
def test_an_invalid_policy_is_refused_naming_the_field(
    api: httpx.Client, body: dict[str, object], field: str
) -> None:
    response = put_policy(api, "bad", **body)
    assert response.status_code == 422
    assert f"`{field}" in response.json()["detail"]
    assert api.get("/v1/policies/bad").status_code == 404


def test_changes_need_an_admin_key_and_reads_do_not(
    api: httpx.Client, limiter: RatewatchProcess, standard_key: str
) -> None:
    assert put_policy(api, "r", limits=[{"limit": 1, "window": 1}]).status_code == 201
    with httpx.Client(
        base_url=limiter.base_url, headers={"Authorization": f"Bearer {standard_key}"}
    ) as plain:
        assert plain.get("/v1/policies/r").status_code == 200
        refused = plain.put("/v1/policies/r", json={"limits": [{"limit": 9, "window": 1}]})
        assert refused.status_code == 403
    assert api.delete("/v1/policies/r").status_code == 200
    assert api.get("/v1/policies/r").status_code == 404
    assert check(api, key="k", policy="r").status_code == 422


def test_the_openapi_document_describes_the_policy_routes(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    schema = schema_of(spec, "PolicyBody")
    body = {
        "limits": [{"limit": 10, "window": 1}, {"limit": 1000, "window": 3600}],
        "mode": "shadow",
    }
    jsonschema.validate(body, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"limits": [{"limit": 1, "window": 1, "x": 1}]}, schema)
    assert put_policy(api, "documented", **body).status_code == 201
    for path in ("/v1/policies/{name}", "/v1/policies/{name}/overrides/{identifier}"):
        assert {"get", "put", "delete"} <= set(spec["paths"][path])
