"""Read routes over the analytics store: ``GET /v1/analytics/usage``, ``GET /v1/audit`` and
``GET /v1/alerts``.

The limiter holds no ClickHouse client of its own in the embedded mode: its ``Analytics``
(``analytics/gateway.py``) asks the process that owns chDB.  The routes validate the query
parameters; the SQL is written by ``analytics/usage.py`` and ``analytics/logs.py``, and
every query names the caller's tenant.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from analytics.gateway import Analytics
from analytics.logs import (
    ALERT_FILTERS,
    DEFAULT_LISTED_ROWS,
    MAX_LISTED_ROWS,
    LogQuery,
    alerts_sql,
    audit_sql,
    listed,
)
from analytics.usage import DEFAULT_TOP, GROUP_BY, MAX_TOP, WINDOWS, UsageQuery
from control.analytics_store import run_query
from control.auth import ControlAuth
from control.http import json_response
from limiter.http.problems import Problem
from limiter.http.schemas import MAX_KEY_LENGTH
from limiter.state.apikeys import MAX_SEGMENT_LENGTH

MAX_ROUTE_LENGTH = 2048
_USAGE_PARAMETERS = {"key", "window", "route", "segment", "group_by", "top"}
_AUDIT_PARAMETERS = {"action", "since", "until", "limit"}
_ALERT_PARAMETERS = {*ALERT_FILTERS, "since", "until", "limit"}


class AnalyticsRoutes:
    def __init__(self, auth: ControlAuth, analytics: Analytics | None):
        self._auth = auth
        self._analytics = analytics

    def routes(self) -> list[Route]:
        return [
            Route("/v1/analytics/usage", self.usage, methods=["GET"]),
            Route("/v1/audit", self.audit, methods=["GET"]),
            Route("/v1/alerts", self.alerts, methods=["GET"]),
        ]

    async def usage(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=False)
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
        principal = await self._auth.principal(request, admin=True)
        params = _parameters(request, _AUDIT_PARAMETERS)
        query = _log_query(principal.tenant, params, ("action",), 100)
        rows = await run_query(self._analytics, audit_sql(query))
        return json_response({"tenant": principal.tenant, "entries": listed(rows, "details")})

    async def alerts(self, request: Request) -> Response:
        """What the abuse detection did, newest first: readable by every key of the tenant,
        as its blocks are (``GET /v1/blocks``), since an alert explains a block."""
        principal = await self._auth.principal(request, admin=False)
        params = _parameters(request, _ALERT_PARAMETERS)
        query = _log_query(principal.tenant, params, ALERT_FILTERS, MAX_KEY_LENGTH)
        rows = await run_query(self._analytics, alerts_sql(query))
        return json_response({"tenant": principal.tenant, "alerts": listed(rows, "explanation")})


def _parameters(request: Request, known: set[str]) -> Mapping[str, str]:
    params = request.query_params
    unknown = sorted(set(params) - known)
    if unknown:
        raise _invalid(f"unknown query parameter {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return params


def _log_query(
    tenant: str, params: Mapping[str, str], filters: tuple[str, ...], max_length: int
) -> LogQuery:
    """A log listing from the query parameters: exact filters, ``since`` (inclusive) and
    ``until`` in epoch milliseconds, ``limit`` rows."""
    chosen = {}
    for name in filters:
        value = _text(params, name, max_length)
        if value is not None:
            chosen[name] = value
    moments = {
        name: _integer(params, name, 0, 0, 10**13) if name in params else None
        for name in ("since", "until")
    }
    return LogQuery(
        tenant,
        chosen,
        moments["since"],
        moments["until"],
        _integer(params, "limit", DEFAULT_LISTED_ROWS, 1, MAX_LISTED_ROWS),
    )


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


def _invalid(detail: str) -> Problem:
    return Problem(422, "validation-error", detail)
