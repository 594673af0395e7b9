"""The OpenAPI document, generated from the same msgspec structs that validate requests."""

from __future__ import annotations

from typing import Any

import msgspec

from control.schemas.policies import SCHEMAS as POLICY_SCHEMAS
from control.schemas.policies import policy_paths
from control.schemas.requests import (
    AllowlistAdd,
    BlockCreate,
    KeyCreate,
    PrivacyDelete,
    PrivacySummary,
    SettingsUpdate,
    WebhookCreate,
    WebhookUpdate,
)
from control.schemas.responses import (
    AlertList,
    AuditList,
    KeyCreated,
    KeyList,
    PrivacyDeleteResult,
    PrivacySummaryResult,
    UsageResponse,
)
from limiter.http.schemas import BatchRequest, BatchResult, CheckRequest, CheckResult

REF = "#/components/schemas/{name}"
PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "retry_after": {
            "type": "integer",
            "description": "Seconds until a retry can pass (429, also as Retry-After).",
        },
    },
    "required": ["type", "title", "status", "detail"],
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(name=name)}


def _json(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": _ref(name)}}}


def _problems(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": "Problem details",
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
        for status in statuses
    }


def _operation(
    summary: str, response: str | None, *problems: int, body: str | None = None, ok: str = "200"
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            ok: {"description": "OK", **(_json(response) if response else {})},
            **_problems(401, 429, 503, *problems),
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, **_json(body)}
    return operation


def _query_parameters(*specs: tuple[str, str, str]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {"type": kind},
            "description": text,
        }
        for name, kind, text in specs
    ]


def build_openapi(version: str) -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [
            CheckRequest,
            CheckResult,
            BatchRequest,
            BatchResult,
            KeyCreate,
            KeyCreated,
            KeyList,
            BlockCreate,
            SettingsUpdate,
            UsageResponse,
            AuditList,
            AlertList,
            PrivacyDelete,
            PrivacySummary,
            PrivacyDeleteResult,
            PrivacySummaryResult,
            AllowlistAdd,
            WebhookCreate,
            WebhookUpdate,
            *POLICY_SCHEMAS,
        ],
        ref_template=REF,
    )
    components["Problem"] = PROBLEM_SCHEMA
    rate_limit_headers = {
        "RateLimit": {
            "schema": {"type": "string"},
            "description": '`"default";r=<remaining>;t=<reset>`',
        },
        "RateLimit-Policy": {
            "schema": {"type": "string"},
            "description": '`"default";q=<limit>;w=<window>`',
        },
        "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds, when denied."},
    }
    check = _operation(
        "Check and count one request against a limit",
        "CheckResult",
        400,
        413,
        422,
        body="CheckRequest",
    )
    check["responses"]["200"]["headers"] = rate_limit_headers
    check["description"] = (
        "A denied check is still 200 with `allowed: false`; the caller decides its own 429."
    )
    usage = _operation("Usage of the tenant: totals, time series, top groups", "UsageResponse", 422)
    usage["parameters"] = _query_parameters(
        ("key", "string", "Only this limiter key."),
        ("window", "string", "`1h`, `24h` (default), `7d` or `30d`."),
        ("route", "string", "Only this route."),
        ("segment", "string", "Only this customer segment."),
        ("group_by", "string", "`key`, `route` or `segment`: adds the top groups."),
        ("top", "integer", "How many groups (1-1000, default 10)."),
    )
    audit = _operation("The tenant's audit log, newest first (admin)", "AuditList", 403, 422)
    audit["parameters"] = _query_parameters(
        ("action", "string", "Only this action, e.g. `key.created`."),
        ("since", "integer", "From this epoch millisecond on."),
        ("until", "integer", "Before this epoch millisecond."),
        ("limit", "integer", "At most this many entries (1-1000, default 100)."),
    )
    alerts = _operation("What the abuse detection did, newest first", "AlertList", 422)
    alerts["parameters"] = _query_parameters(
        ("kind", "string", "Only this kind, e.g. `block.created`."),
        ("scope", "string", "Only blocks of this scope: `ip`, `key` or `user_id`."),
        ("subject", "string", "Only this blocked value."),
        ("mode", "string", "`enforce` or `shadow`."),
        ("detector", "string", "Only this detector layer, e.g. `rules`."),
        ("since", "integer", "From this epoch millisecond on."),
        ("until", "integer", "Before this epoch millisecond."),
        ("limit", "integer", "At most this many alerts (1-1000, default 100)."),
    )
    id_param = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    create_webhook = _operation(
        "Create a webhook; its signing secret is shown once (admin)",
        None,
        400,
        403,
        409,
        413,
        422,
        body="WebhookCreate",
        ok="201",
    )
    create_webhook["description"] = (
        "Alerts are POSTed with the Standard Webhooks headers `webhook-id`, "
        "`webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256 of "
        '"id.timestamp.body">` keyed by the base64 part of the `whsec_` secret); the body is '
        '`{"type", "timestamp", "data"}`. Targets on loopback or private addresses are '
        "refused (422 `webhook-target-refused`) unless the server allows them; 409 "
        "`too-many-webhooks` past the tenant's cap."
    )
    update_webhook = _operation(
        "Change a webhook's url, events, description or enabled (admin)",
        None,
        400,
        403,
        404,
        413,
        422,
        body="WebhookUpdate",
    )
    update_webhook["description"] = (
        "Only the fields given change, in one atomic step; unknown fields are refused (422). "
        "A new `url` is checked as at creation. A disabled webhook is sent no new alerts, and "
        "its deliveries that fall due while it is disabled are dropped, each logged as a "
        "`skipped` attempt."
    )
    rotate_secret = _operation(
        "Give a webhook a new signing secret, shown once; the old one signs too for 24 h (admin)",
        None,
        403,
        404,
    )
    rotate_secret["description"] = (
        "Until `previous_secret_expires_at` every delivery carries both signatures, "
        "space-separated in `webhook-signature`, so receivers holding either secret verify it."
    )
    deliveries = _operation("The webhook's latest delivery attempts (admin)", None, 403, 404, 422)
    deliveries["parameters"] = [
        *id_param,
        *_query_parameters(("limit", "integer", "At most this many attempts (1-100).")),
    ]
    create_key = _operation(
        "Create an API key; the key (and a signed key's secret) is shown once (admin)",
        "KeyCreated",
        400,
        403,
        422,
        body="KeyCreate",
        ok="201",
    )
    create_key["description"] = (
        'With `"signed": true` the key\'s requests (on every route) must carry '
        "`RateWatch-Timestamp: <Unix seconds>` and `RateWatch-Signature: v1=<hex HMAC-SHA256 of "
        '"timestamp\\nMETHOD\\npath?query\\nhex SHA-256 of the body">` keyed by '
        "`signing_secret`, within 300 s of the server's clock; else 401 `signature-missing`, "
        "`signature-stale` or `signature-invalid`."
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "RateWatch", "version": version},
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "An API key. A signed key's requests also carry RateWatch-Timestamp "
                        "and RateWatch-Signature (docs/security.md, 'Signed requests')."
                    ),
                }
            },
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/v1/check": {"post": check},
            "/v1/batch": {
                "post": _operation(
                    "Decide up to 1000 checks in one request, results in the same order",
                    "BatchResult",
                    400,
                    413,
                    422,
                    body="BatchRequest",
                )
            },
            "/v1/keys": {
                "get": _operation("List the tenant's API keys (admin)", "KeyList", 403),
                "post": create_key,
            },
            "/v1/keys/{id}": {
                "delete": {
                    **_operation("Revoke an API key (admin)", None, 403, 404),
                    "parameters": id_param,
                }
            },
            "/v1/blocks": {
                "get": _operation("List active blocks", None),
                "post": _operation(
                    "Block an ip, key or user_id for ttl seconds (admin)",
                    None,
                    400,
                    403,
                    422,
                    body="BlockCreate",
                    ok="201",
                ),
            },
            "/v1/blocks/{id}": {
                "delete": {
                    **_operation("Lift a block at once (admin)", None, 403, 404),
                    "parameters": id_param,
                }
            },
            "/v1/settings": {
                "get": _operation("The tenant's settings (admin)", None, 403),
                "patch": _operation(
                    "Change the tenant's settings (admin)",
                    None,
                    400,
                    403,
                    422,
                    body="SettingsUpdate",
                ),
            },
            "/v1/analytics/usage": {"get": usage},
            **policy_paths(_operation),
            "/v1/allowlist": {
                "get": _operation("Subjects the detectors never block", None),
                "post": _operation(
                    "Allowlist an ip (or network), key or user_id (admin)",
                    None,
                    400,
                    403,
                    422,
                    body="AllowlistAdd",
                    ok="201",
                ),
                "delete": {
                    **_operation("Take an entry off the allowlist (admin)", None, 403, 404, 422),
                    "parameters": _query_parameters(
                        ("scope", "string", "`ip`, `key` or `user_id`."),
                        ("value", "string", "The entry as added."),
                    ),
                },
            },
            "/v1/webhooks": {
                "get": _operation(
                    "The tenant's webhooks with their delivery health (admin)", None, 403
                ),
                "post": create_webhook,
            },
            "/v1/webhooks/{id}": {
                "patch": {**update_webhook, "parameters": id_param},
                "delete": {
                    **_operation(
                        "Delete a webhook; its pending retries are dropped (admin)", None, 403, 404
                    ),
                    "parameters": id_param,
                },
            },
            "/v1/webhooks/{id}/rotate-secret": {"post": {**rotate_secret, "parameters": id_param}},
            "/v1/webhooks/{id}/deliveries": {"get": deliveries},
            "/v1/webhooks/{id}/test": {
                "post": {
                    **_operation(
                        "Send a `webhook.test` ping through the delivery path (admin); 409 "
                        "`webhook-disabled` for a disabled webhook",
                        None,
                        403,
                        404,
                        409,
                        ok="202",
                    ),
                    "parameters": id_param,
                }
            },
            "/v1/audit": {"get": audit},
            "/v1/alerts": {"get": alerts},
            "/v1/privacy/delete": {
                "post": _operation(
                    "Erase a user's counters, blocks and analytics rows (admin)",
                    "PrivacyDeleteResult",
                    400,
                    403,
                    422,
                    body="PrivacyDelete",
                )
            },
            "/v1/privacy/summary": {
                "post": _operation(
                    "What is held about a user",
                    "PrivacySummaryResult",
                    400,
                    422,
                    body="PrivacySummary",
                )
            },
            "/health": {
                "get": {
                    "summary": "Liveness",
                    "security": [],
                    "responses": {"200": {"description": "OK"}},
                }
            },
            "/health/detailed": {
                "get": {
                    "summary": "Each dependency's status",
                    "security": [],
                    "responses": {"200": {"description": "OK"}},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": [],
                    "responses": {"200": {"description": "OK"}},
                }
            },
        },
    }
