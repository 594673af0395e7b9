"""``POST /v1/privacy/delete`` and ``POST /v1/privacy/summary``: a user's data, reported or
erased in every store (Redis counters and blocks, the raw analytics table and every rollup).

Which data is a user's is defined in ``limiter/state/privacy.py`` and ``analytics/erasure.py``.
A delete erases the analytics rows first and Redis second: if the analytics store is
down, nothing is erased and the caller gets a 503 to retry (both steps are idempotent).
Both requests are audited with their counts, never with the data itself.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from analytics.erasure import check_subject, summary_sql
from analytics.errors import AnalyticsError, QueryError
from analytics.gateway import Analytics
from control.audit import AuditTrail
from control.routes.admin import client_ip, json_response, principal_of, read_json
from control.routes.analytics import run_query
from limiter.http.checks import CheckHandler
from limiter.http.problems import Problem
from limiter.http.schemas import MAX_KEY_LENGTH
from limiter.state.privacy import UserDataStore
from stream.audit import PRIVACY_DELETED, PRIVACY_SUMMARY

UserId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="The user: the `user_id` of checks, and keys equal to it or "
        "starting with `<user_id>:`.",
    ),
]


class PrivacyDelete(msgspec.Struct, kw_only=True):
    user_id: UserId
    reason: Annotated[str, Meta(max_length=500)] = ""


class PrivacySummary(msgspec.Struct, kw_only=True):
    user_id: UserId


_delete = msgspec.json.Decoder(PrivacyDelete)
_summary = msgspec.json.Decoder(PrivacySummary)
_ANALYTICS_TABLES = (
    "decisions",
    "decisions_per_minute",
    "decisions_per_hour",
    "decisions_per_day",
    "alerts",
)


class PrivacyRoutes:
    def __init__(
        self,
        checks: CheckHandler,
        user_data: UserDataStore,
        analytics: Analytics | None,
        audit: AuditTrail,
    ):
        self._checks = checks
        self._user_data = user_data
        self._analytics = analytics
        self._audit = audit

    def routes(self) -> list[Route]:
        return [
            Route("/v1/privacy/delete", self.delete, methods=["POST"]),
            Route("/v1/privacy/summary", self.summary, methods=["POST"]),
        ]

    async def delete(self, request: Request) -> Response:
        principal = await principal_of(self._checks, request, admin=True)
        body: PrivacyDelete = await read_json(request, _delete)
        _check_user_id(principal.tenant, body.user_id)
        analytics: dict[str, int] | None = None
        if self._analytics is not None:
            try:
                analytics = await self._analytics.erase_user(principal.tenant, body.user_id)
            except AnalyticsError as exc:
                raise Problem(
                    503,
                    "analytics-unavailable",
                    f"nothing was erased: the analytics store failed ({exc}); retry",
                ) from exc
        counters, blocks, records = await self._user_data.erase(principal.tenant, body.user_id)
        deleted = {
            "redis": {"counters": counters, "blocks": blocks, "detection_records": records},
            "clickhouse": analytics,
        }
        await self._audit.record(
            principal,
            PRIVACY_DELETED,
            body.user_id,
            {
                "reason": body.reason,
                "counters": counters,
                "blocks": blocks,
                "detection_records": records,
                **{f"{table}_rows": count for table, count in (analytics or {}).items()},
            },
            client_ip(request),
        )
        message = f"Successfully deleted data for user {body.user_id}"
        if analytics is None:
            message += " (Redis only: this limiter has no analytics store)"
        return json_response(
            {
                "success": True,
                "message": message,
                "deleted_keys": counters + blocks + records,
                "deleted": deleted,
            }
        )

    async def summary(self, request: Request) -> Response:
        principal = await principal_of(self._checks, request, admin=False)
        body: PrivacySummary = await read_json(request, _summary)
        _check_user_id(principal.tenant, body.user_id)
        held = await self._user_data.find(principal.tenant, body.user_id)
        stored: dict[str, Any] | None = None
        keys = set(held.limiter_keys)
        if self._analytics is not None:
            rows = await run_query(self._analytics, summary_sql(principal.tenant, body.user_id))
            stored = rows[0] if rows else {}
        total_keys = max(len(keys), int((stored or {}).get("total_keys") or 0))
        await self._audit.record(principal, PRIVACY_SUMMARY, body.user_id, {}, client_ip(request))
        return json_response(
            {
                "user_id": body.user_id,
                "total_keys": total_keys,
                "total_requests": int((stored or {}).get("total_requests") or 0),
                "active_windows": len(held.counters),
                "data_retention_days": (stored or {}).get("data_retention_days"),
                "stores": {
                    "redis": {
                        "counters": len(held.counters),
                        "blocks": len(held.blocks),
                        "detection_records": len(held.detection_records),
                    },
                    "clickhouse": None
                    if stored is None
                    else {
                        table: int(stored.get(f"{table}_rows") or 0) for table in _ANALYTICS_TABLES
                    },
                },
            }
        )


def _check_user_id(tenant: str, user_id: str) -> None:
    try:
        check_subject(tenant, user_id)
    except QueryError as exc:
        raise Problem(422, "validation-error", f"user_id: {exc}") from None
