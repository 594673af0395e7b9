"""The policy API's body, for the OpenAPI document.  The routes validate a body with
``limiter.policies.model.parse_rule``, which checks what a schema cannot say (a window
length given twice, limit × window) and names the field; this struct describes the same
shape."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from limiter.algorithms import MAX_WINDOW_SECONDS, Algorithm
from limiter.policies.model import MAX_LIMIT, MAX_WINDOWS


class PolicyWindowBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1, le=MAX_LIMIT, description="Requests per window.")]
    window: Annotated[int, Meta(ge=1, le=MAX_WINDOW_SECONDS, description="Seconds.")]


class PolicyBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A named policy, or an override of one: every window is checked at once, a check
    denied if any window denies (docs/policies.md)."""

    limits: Annotated[list[PolicyWindowBody], Meta(min_length=1, max_length=MAX_WINDOWS)]
    algorithm: Algorithm | None = None
    mode: Literal["enforce", "shadow"] | None = None


SCHEMAS = [PolicyBody]


def policy_paths(operation: Any) -> dict[str, Any]:
    """The policy routes' entries of the OpenAPI ``paths`` (``operation`` is
    ``control.openapi._operation``)."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    identifier = {
        "name": "identifier",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "An exact identifier, or a prefix ending in `*`.",
    }
    put = "Create (201) or replace (200) it (admin)"
    return {
        "/v1/policies": {"get": operation("The tenant's named policies", None)},
        "/v1/policies/{name}": {
            "parameters": [name],
            "get": operation("One policy with its overrides", None, 404),
            "put": operation(put, None, 400, 403, 413, 422, body="PolicyBody"),
            "delete": operation("Delete it and its overrides (admin)", None, 403, 404),
        },
        "/v1/policies/{name}/overrides": {
            "parameters": [name],
            "get": operation("The policy's overrides", None, 404),
        },
        "/v1/policies/{name}/overrides/{identifier}": {
            "parameters": [name, identifier],
            "get": operation("One override", None, 404),
            "put": operation(put, None, 400, 403, 404, 413, 422, body="PolicyBody"),
            "delete": operation("Delete the override (admin)", None, 403, 404),
        },
    }
