"""The control plane's way to the analytics store: the rows of a query, or the problem (503)
that tells the caller the store is missing or down."""

from __future__ import annotations

from typing import Any

from analytics.errors import AnalyticsError
from analytics.gateway import Analytics
from limiter.http.problems import Problem


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
