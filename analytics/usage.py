"""Usage of one tenant over a recent window, from the rollups: totals, a time series, and
the top keys, routes or segments.

This module only writes SQL and shapes its results; whoever runs the SQL (the owner of chDB
over its socket, or a ClickHouse server) is the caller's business, so the limiter can use
it without loading a ClickHouse client.  Every query names the tenant, so a caller can only
see its own rows.

Windows end now and start ``window`` earlier, rounded down to the table's bucket: the
minute rollup serves the short windows (exact to the minute), the hour rollup the long
ones (exact to the hour).  Rows of one bucket may still be unmerged, so every query sums.

A request that neither filters nor groups by key reads the tenant rollups (migration 0007),
whose rows are the per-key rows summed over keys: the same sums from a few rows per bucket
instead of one per key.  All three queries of a request read the same table, so its
totals, series and groups always describe the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from analytics.sqltext import quote
from analytics.tables import ROLLUP_TABLES, TENANT_ROLLUP_TABLES

GroupBy = Literal["key", "route", "segment"]
GROUP_BY: tuple[GroupBy, ...] = ("key", "route", "segment")
MAX_TOP = 1000
DEFAULT_TOP = 10


@dataclass(frozen=True)
class UsageWindow:
    seconds: int
    table: str  # rollup granularity the window reads
    step: str  # ClickHouse interval of the series' points
    step_seconds: int


WINDOWS: dict[str, UsageWindow] = {
    "1h": UsageWindow(3600, "minute", "MINUTE", 60),
    "24h": UsageWindow(86_400, "minute", "HOUR", 3600),
    "7d": UsageWindow(7 * 86_400, "hour", "HOUR", 3600),
    "30d": UsageWindow(30 * 86_400, "hour", "DAY", 86_400),
}


@dataclass(frozen=True)
class UsageQuery:
    """One usage request of ``tenant``; ``now`` (epoch seconds) pins the window's end, so
    the totals, the series and the groups describe the same rows."""

    tenant: str
    window: str
    now: int
    key: str | None = None
    route: str | None = None
    segment: str | None = None
    group_by: GroupBy | None = None
    top: int = DEFAULT_TOP

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ValueError(f"window {self.window!r} is not one of {', '.join(WINDOWS)}")
        if self.group_by is not None and self.group_by not in GROUP_BY:
            raise ValueError(f"group_by {self.group_by!r} is not one of {', '.join(GROUP_BY)}")
        if not 1 <= self.top <= MAX_TOP:
            raise ValueError(f"top {self.top!r} is not within 1-{MAX_TOP}")

    @property
    def spec(self) -> UsageWindow:
        return WINDOWS[self.window]

    @property
    def start(self) -> int:
        """The first second counted: the bucket holding ``now - window``."""
        spec = self.spec
        bucket = 60 if spec.table == "minute" else 3600
        first = self.now - spec.seconds
        return first - first % bucket

    @property
    def table(self) -> str:
        """The rollup the queries read: per key only when the key is asked about."""
        per_key = self.key is not None or self.group_by == "key"
        return (ROLLUP_TABLES if per_key else TENANT_ROLLUP_TABLES)[self.spec.table]

    def _where(self) -> str:
        conditions = [
            f"tenant = {quote(self.tenant)}",
            f"bucket >= toDateTime({self.start}, 'UTC')",
            f"bucket <= toDateTime({self.now}, 'UTC')",
        ]
        for column, value in (("key", self.key), ("route", self.route), ("segment", self.segment)):
            if value is not None:
                conditions.append(f"{column} = {quote(value)}")
        return " AND ".join(conditions)

    def totals_sql(self) -> str:
        return f"""
            SELECT {_SUMS},
                   quantilesMerge(0.5, 0.9, 0.99)(latency_quantiles) AS latency
            FROM {self.table}
            WHERE {self._where()}"""

    def series_sql(self) -> str:
        spec = self.spec
        step = f"INTERVAL 1 {spec.step}"
        first = f"toStartOfInterval(toDateTime({self.start}, 'UTC'), {step})"
        last = f"toStartOfInterval(toDateTime({self.now}, 'UTC'), {step}) + {step}"
        # WITH FILL makes a point of every step, empty ones included, so a chart has no gaps
        return f"""
            SELECT toStartOfInterval(bucket, {step}) AS ts, {_SUMS}
            FROM {self.table}
            WHERE {self._where()}
            GROUP BY ts
            ORDER BY ts WITH FILL FROM {first} TO {last} STEP {step}"""

    def groups_sql(self) -> str | None:
        if self.group_by is None:
            return None
        return f"""
            SELECT {self.group_by} AS value, {_SUMS}
            FROM {self.table}
            WHERE {self._where()}
            GROUP BY value
            ORDER BY requests DESC, value
            LIMIT {self.top}"""

    def response(
        self,
        totals: dict[str, Any],
        series: list[dict[str, Any]],
        groups: list[dict[str, Any]] | None,
    ) -> dict[str, Any]:
        """The API's answer from the three queries' rows (as JSON values)."""
        latency = totals.get("latency") or [None, None, None]
        body: dict[str, Any] = {
            "tenant": self.tenant,
            "window": self.window,
            "from": _iso(self.start),
            "to": _iso(self.now),
            "granularity": self.spec.step.lower(),
            "filters": {"key": self.key, "route": self.route, "segment": self.segment},
            "totals": {
                **_counts(totals),
                "latency_us": {
                    "p50": _number(latency[0]),
                    "p90": _number(latency[1]),
                    "p99": _number(latency[2]),
                },
            },
            "series": [{"ts": _iso_text(row["ts"]), **_counts(row)} for row in series],
        }
        if self.group_by is not None:
            body["group_by"] = self.group_by
            body["groups"] = [{"value": row["value"], **_counts(row)} for row in groups or []]
        return body


_SUMS = (
    "toUInt64(sum(requests)) AS requests, toUInt64(sum(allowed_requests)) AS allowed, "
    "toUInt64(sum(denied_requests)) AS denied, "
    "toUInt64(sum(shadow_denied_requests)) AS shadow_denied, toUInt64(sum(total_cost)) AS cost"
)


def _counts(row: dict[str, Any]) -> dict[str, Any]:
    requests = int(row.get("requests") or 0)
    denied = int(row.get("denied") or 0)
    return {
        "requests": requests,
        "allowed": int(row.get("allowed") or 0),
        "denied": denied,
        # allowed answers a shadow policy would have denied (docs/policies.md): in allowed
        "shadow_denied": int(row.get("shadow_denied") or 0),
        "cost": int(row.get("cost") or 0),
        "deny_rate": round(denied / requests, 6) if requests else 0.0,
    }


def _number(value: Any) -> float | None:
    # quantiles of no rows are NaN, which ClickHouse's JSON writes as null or a string
    if isinstance(value, int | float) and value == value:
        return float(value)
    return None


def _iso(epoch_seconds: int) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_text(value: str) -> str:
    # ClickHouse's JSON writes DateTime('UTC') as "YYYY-MM-DD hh:mm:ss"
    return value.replace(" ", "T") + "Z" if "T" not in value else value
