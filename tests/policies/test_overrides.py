"""Overrides of a policy through a real `ratewatch serve`: the most specific one applies."""

from __future__ import annotations

import httpx
import pytest

from limiter.policies.model import (
    Override,
    Overrides,
    Policy,
    PolicyMode,
    PolicyWindow,
    Rule,
    resolve,
)


def limit_of(api: httpx.Client, key: str, policy: str = "tiers") -> int:
    answer = api.post("/v1/check", json={"key": key, "policy": policy})
    assert answer.status_code == 200, answer.text
    limit: int = answer.json()["limit"]
    return limit


def put(api: httpx.Client, path: str, limit: int, **extra: object) -> httpx.Response:
    return api.put(path, json={"limits": [{"limit": limit, "window": 60}], **extra})


def test_a_wildcard_override_beats_the_policy_and_loses_to_an_exact_one(
    api: httpx.Client,
) -> None:
    assert put(api, "/v1/policies/tiers", 10).status_code == 201
    assert put(api, "/v1/policies/tiers/overrides/acct:enterprise-*", 1000).status_code == 201
    assert put(api, "/v1/policies/tiers/overrides/acct:enterprise-eu-*", 2000).status_code == 201
    assert put(api, "/v1/policies/tiers/overrides/acct:enterprise-42", 5).status_code == 201
    assert limit_of(api, "acct:free-1") == 10
    assert limit_of(api, "acct:enterprise-7") == 1000
    assert limit_of(api, "acct:enterprise-eu-7") == 2000  # the longer prefix
    assert limit_of(api, "acct:enterprise-42") == 5  # exact beats every wildcard
    listed = api.get("/v1/policies/tiers/overrides").json()["overrides"]
    assert [o["identifier"] for o in listed] == [
        "acct:enterprise-*", "acct:enterprise-42", "acct:enterprise-eu-*"]  # fmt: skip
    one = api.get("/v1/policies/tiers/overrides/acct:enterprise-42").json()
    assert one["limits"] == [{"limit": 5, "window": 60}]
    assert api.delete("/v1/policies/tiers/overrides/acct:enterprise-42").status_code == 200
    assert limit_of(api, "acct:enterprise-42") == 1000
    assert api.get("/v1/policies/tiers/overrides/acct:enterprise-42").status_code == 404


def test_an_override_keeps_the_policys_mode_and_algorithm_unless_it_sets_its_own(
    api: httpx.Client,
) -> None:
    assert put(api, "/v1/policies/tiers", 1, mode="shadow").status_code == 201
    assert put(api, "/v1/policies/tiers/overrides/strict", 1, mode="enforce").status_code == 201
    shadowed = [api.post("/v1/check", json={"key": "k", "policy": "tiers"}) for _ in range(2)]
    assert [a.json()["allowed"] for a in shadowed] == [True, True]
    enforced = [api.post("/v1/check", json={"key": "strict", "policy": "tiers"}) for _ in range(2)]
    assert [a.json()["allowed"] for a in enforced] == [True, False]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/policies/none/overrides/x", 404),  # no such policy
        ("/v1/policies/tiers/overrides/a*b", 422),  # '*' only at the end
    ],
)
def test_bad_overrides_are_problems(api: httpx.Client, path: str, status: int) -> None:
    assert put(api, "/v1/policies/tiers", 1).status_code == 201
    response = put(api, path, 5)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")


def test_deleting_a_policy_deletes_its_overrides(api: httpx.Client) -> None:
    assert put(api, "/v1/policies/tiers", 1).status_code == 201
    assert put(api, "/v1/policies/tiers/overrides/x*", 5).status_code == 201
    assert api.delete("/v1/policies/tiers").status_code == 200
    assert put(api, "/v1/policies/tiers", 2).status_code == 201
    assert api.get("/v1/policies/tiers").json()["overrides"] == []
    assert limit_of(api, "x1") == 2


def test_precedence_of_matches() -> None:
    rule = Rule((PolicyWindow(1, 1),))
    policy = Policy("p", Rule((PolicyWindow(9, 1),), mode=PolicyMode.SHADOW))
    overrides = Overrides(
        [Override("p", ident, Rule((PolicyWindow(n, 1),))) for n, ident in
         [(2, "*"), (3, "a*"), (4, "ab*"), (5, "abc")]]
    )  # fmt: skip
    picked = {
        key: resolve(policy, overrides, key).limits[0].limit
        for key in ["zz", "a", "ab", "abd", "abc", "abcd"]
    }
    assert picked == {"zz": 2, "a": 3, "ab": 4, "abd": 4, "abc": 5, "abcd": 4}
    assert resolve(policy, Overrides([]), "x").limits == policy.rule.limits
    assert resolve(policy, overrides, "abc").mode is PolicyMode.SHADOW
    assert rule.mode is None
