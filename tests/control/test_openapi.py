"""/openapi.json describes what the server really accepts and answers."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from limiter.algorithms import MAX_LIMIT_WINDOW
from tests.support.bad_input import BAD_CHECKS
from tests.support.openapi import objects, schema_of

# rejected for rules a JSON schema cannot state: the limit × window product (stated in the
# schema's description) and IP address syntax
BEYOND_SCHEMA = [
    {"key": "k", "limit": 10**9, "window": 10**6},
    {"key": "k", "limit": 10, "window": 60, "ip": "999.1.1.1"},
    # limit and window, or a policy: one or the other is checked by the server
    {"key": "k", "window": 60},
    {"key": "k", "limit": 10, "window": 60, "policy": "free"},
]


@pytest.fixture(scope="module")
def spec(limiter: Any) -> dict[str, Any]:
    response = httpx.get(limiter.base_url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def test_spec_lists_every_contract_route(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.")
    for path, method in [
        ("/v1/check", "post"),
        ("/v1/batch", "post"),
        ("/v1/keys", "get"),
        ("/v1/keys", "post"),
        ("/v1/keys/{id}", "delete"),
        ("/v1/blocks", "get"),
        ("/v1/blocks", "post"),
        ("/v1/blocks/{id}", "delete"),
        ("/health", "get"),
        ("/health/detailed", "get"),
        ("/metrics", "get"),
    ]:
        assert method in spec["paths"][path], (path, method)


@pytest.mark.parametrize(("body", "status"), BAD_CHECKS)
def test_every_rejected_body_is_also_invalid_by_the_schema(
    spec: dict[str, Any], body: object, status: int
) -> None:
    if body is None or body in BEYOND_SCHEMA:
        return  # no body at all is not a schema question; see BEYOND_SCHEMA
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, schema_of(spec, "CheckRequest"))


@pytest.mark.timeout(120)
def test_every_body_the_schema_allows_is_accepted(spec: dict[str, Any], api: httpx.Client) -> None:
    schema_of(spec, "CheckRequest")
    result_schema = schema_of(spec, "CheckResult")
    # the explicit form (a check by policy needs a policy: tests/policies/): limit and
    # window given, no policy
    explicit = objects(spec, "CheckRequest", {"ip": st.ip_addresses().map(str)}).map(
        lambda b: {k: v for k, v in b.items() if k != "policy"}
    )
    limits = st.fixed_dictionaries(
        {"limit": st.integers(1, 10**12), "window": st.integers(1, 366 * 24 * 3600)}
    )
    bodies = st.builds(lambda b, lw: b | lw, explicit, limits).filter(
        lambda b: b["limit"] * b["window"] <= MAX_LIMIT_WINDOW
    )

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(bodies)
    def accepted(body: dict[str, Any]) -> None:
        response = api.post("/v1/check", json=body)
        assert response.status_code == 200, (body, response.text)
        jsonschema.validate(response.json(), result_schema)

    accepted()


def test_batch_schema_bounds_match(spec: dict[str, Any], api: httpx.Client) -> None:
    checks = spec["components"]["schemas"]["BatchRequest"]["properties"]["checks"]
    assert (checks["minItems"], checks["maxItems"]) == (1, 1000)
    assert api.post("/v1/batch", json={"checks": []}).status_code == 422
