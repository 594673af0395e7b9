"""Read routes over the analytics store: ``GET /v1/analytics/usage``, ``GET /v1/audit`` and
``GET /v1/alerts``.

The limiter holds no ClickHouse client of its own in the embedded mode: its ``Analytics``
(``analytics/gateway.py``) asks the process that owns chDB.  Every query is built here from
validated parameters and names the caller's tenant.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from analytics.errors import AnalyticsError
from analytics.gateway import Analytics
from analytics.sqltext import quote
from analytics.tables import ALERTS_TABLE, AUDIT_TABLE
from analytics.usage import DEFAULT_TOP, GROUP_BY, MAX_TOP, WINDOWS, UsageQuery
from control.routes.admin import json_response, principal_of
from limiter.http.checks import CheckHandler
from limiter.http.problems import Problem
from limiter.http.schemas import MAX_KEY_LENGTH
from limiter.state.apikeys import MAX_SEGMENT_LENGTH

MAX_ROUTE_LENGTH = 2048
MAX_LISTED_ROWS = 1000
_USAGE_PARAMETERS = {"key", "window", "route", "segment", "group_by", "top"}
_AUDIT_PARAMETERS = {"action", "since", "until", "limit"}
_ALERT_FILTERS = ("kind", "scope", "subject", "mode", "detector")
_ALERT_PARAMETERS = {*_ALERT_FILTERS, "since", "until", "limit"}


class AnalyticsRoutes:
    def __init__(self, checks: CheckHandler, analytics: Analytics | None):
        self._checks = checks
        self._analytics = analytics

    def routes(self) -> list[Route]:
        return [
            Route("/v1/analytics/usage", self.usage, methods=["GET"]),
            Route("/v1/audit", self.audit, methods=["GET"]),
            Route("/v1/alerts", self.alerts, methods=["GET"]),
        ]

    async def usage(self, request: Request) -> Response:
        principal = await principal_of(self._checks, request, admin=False)
        params = _parameters(request, _USAGE_PARAMETERS)
        window = params.get("window", "24h")
        if window not in WINDOWS:
            raise _invalid(f"window {window!r} is not one of {', '.join(WINDOWS)}")
        group_by = params.get("group_by")
        if group_by is not None and group_by not in GROUP_BY:
            raise _invalid(f"group_by {group_by!r} is not one of {', '.join(GROUP_BY)}")
        query = UsageQuery(
            tenant=principal.tenant,
            window=window,
            now=int(time.time()),
            key=_text(params, "key", MAX_KEY_LENGTH),
            route=_text(params, "route", MAX_ROUTE_LENGTH),
            segment=_text(params, "segment", MAX_SEGMENT_LENGTH),
            group_by=group_by,  # checked against GROUP_BY above
            top=_integer(params, "top", DEFAULT_TOP, 1, MAX_TOP),
        )
        totals = await run_query(self._analytics, query.totals_sql())
        series = await run_query(self._analytics, query.series_sql())
        groups_sql = query.groups_sql()
        groups = await run_query(self._analytics, groups_sql) if groups_sql else None
        return json_response(query.response(totals[0] if totals else {}, series, groups))

    async def audit(self, request: Request) -> Response:
        principal = await principal_of(self._checks, request, admin=True)
        params = _parameters(request, _AUDIT_PARAMETERS)
        conditions = [f"tenant = {quote(principal.tenant)}"]
        action = _text(params, "action", 100)
        if action is not None:
            conditions.append(f"action = {quote(action)}")
        conditions.extend(_time_range(params))
        limit = _integer(params, "limit", 100, 1, MAX_LISTED_ROWS)
        rows = await run_query(
            self._analytics,
            # the epoch-ms alias must not be called ts: an alias shadows the column in WHERE
            f"""SELECT toUnixTimestamp64Milli(ts) AS epoch_ms, toString(event_id) AS id, actor,
                       action, target, details, source_ip
                FROM {AUDIT_TABLE} FINAL
                WHERE {" AND ".join(conditions)}
                ORDER BY ts DESC, id
                LIMIT {limit}""",
        )
        return json_response({"tenant": principal.tenant, "entries": _listed(rows, "details")})

    async def alerts(self, request: Request) -> Response:
        """What the abuse detection did, newest first: readable by every key of the tenant,
        as its blocks are (``GET /v1/blocks``), since an alert explains a block."""
        principal = await principal_of(self._checks, request, admin=False)
        params = _parameters(request, _ALERT_PARAMETERS)
        conditions = [f"tenant = {quote(principal.tenant)}"]
        for name in _ALERT_FILTERS:
            value = _text(params, name, MAX_KEY_LENGTH)
            if value is not None:
                conditions.append(f"{name} = {quote(value)}")
        conditions.extend(_time_range(params))
        limit = _integer(params, "limit", 100, 1, MAX_LISTED_ROWS)
        rows = await run_query(
            self._analytics,
            f"""SELECT toUnixTimestamp64Milli(ts) AS epoch_ms, toString(event_id) AS id, kind,
                       scope, subject, nullIf(block_id, '') AS block_id, mode, ttl_seconds,
                       offence, detector, score, explanation
                FROM {ALERTS_TABLE} FINAL
                WHERE {" AND ".join(conditions)}
                ORDER BY ts DESC, id
                LIMIT {limit}""",
        )
        return json_response({"tenant": principal.tenant, "alerts": _listed(rows, "explanation")})


async def run_query(analytics: Analytics | None, sql: str) -> list[dict[str, Any]]:
    """The rows of ``sql``; 503 when this limiter has no analytics store or it is down."""
    if analytics is None:
        raise Problem(
            503,
            "analytics-unavailable",
            "this limiter has no analytics store: start it with --clickhouse-url "
            "(`ratewatch up` does)",
        )
    try:
        result = await analytics.query(sql)
    except AnalyticsError as exc:
        raise Problem(503, "analytics-unavailable", f"the analytics store failed: {exc}") from exc
    return result.dicts()


def _parameters(request: Request, known: set[str]) -> Mapping[str, str]:
    params = request.query_params
    unknown = sorted(set(params) - known)
    if unknown:
        raise _invalid(f"unknown query parameter {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return params


def _time_range(params: Mapping[str, str]) -> list[str]:
    """Conditions on ``ts`` from the ``since`` (inclusive) and ``until`` epoch milliseconds."""
    conditions = []
    for name, operator in (("since", ">="), ("until", "<")):
        if name in params:
            moment = _integer(params, name, 0, 0, 10**13)
            conditions.append(f"ts {operator} fromUnixTimestamp64Milli({moment}, 'UTC')")
    return conditions


def _text(params: Mapping[str, str], name: str, max_length: int) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not value or len(value) > max_length:
        raise _invalid(f"{name} must be 1-{max_length} characters, got {len(value)}")
    return value


def _integer(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _invalid(f"{name} {text[:50]!r} is not an integer") from None
    if not low <= value <= high:
        raise _invalid(f"{name} {value} is not within {low}-{high}")
    return value


def _listed(rows: list[dict[str, Any]], json_column: str) -> list[dict[str, Any]]:
    """Rows of a log read newest first, as the API lists them: ``epoch_ms`` as ``ts``, and
    ``json_column`` (stored as JSON text) as the object it holds."""
    for row in rows:
        row["ts"] = row.pop("epoch_ms")
        row[json_column] = _json_object(row[json_column])
    return rows


def _json_object(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text


def _invalid(detail: str) -> Problem:
    return Problem(422, "validation-error", detail)
