"""The Overview dashboard: how much traffic one tenant sends, how much of it is denied and
why, how fast the limiter decides, and which keys and routes matter.  For the platform
team; read from the per-minute rollups: the tenant rollup, but for the panel about keys."""

from __future__ import annotations

from dashboards.model import Dashboard, Override
from dashboards.panels import stat, table, timeseries
from dashboards.sql import (
    FILL_TIME,
    LATENCY,
    MINUTES_IN_RANGE,
    PER_MINUTE,
    TENANT,
    TENANT_PER_MINUTE,
    TIME_BUCKET,
)

_WHERE = f"FROM {TENANT_PER_MINUTE}\nWHERE {TENANT}\n  AND {MINUTES_IN_RANGE}"
_KEYS_WHERE = f"FROM {PER_MINUTE}\nWHERE {TENANT}\n  AND {MINUTES_IN_RANGE}"
_DENY_THRESHOLDS = ((None, "green"), (0.05, "orange"), (0.2, "red"))

REQUESTS = stat(
    "Requests",
    "Decisions in the time range (allowed and denied).",
    f"SELECT sum(requests) AS requests\n{_WHERE}",
)
REQUESTS_PER_SECOND = stat(
    "Requests/s",
    "Average decisions per second over the time range.",
    "SELECT sum(requests) / greatest(1, dateDiff('second', $__fromTime, $__toTime))"
    f" AS requests_per_second\n{_WHERE}",
    unit="reqps",
    decimals=2,
)
DENIED = stat(
    "Denied",
    "Decisions that answered allowed: false (over the limit, blocked, failed closed).",
    f"SELECT sum(denied_requests) AS denied\n{_WHERE}",
    thresholds=((None, "orange"),),
)
DENY_RATE = stat(
    "Deny rate",
    "Denied decisions as a share of all decisions (a ratio of sums).",
    f"SELECT sum(denied_requests) / nullIf(sum(requests), 0) AS deny_rate\n{_WHERE}",
    unit="percentunit",
    decimals=1,
    thresholds=_DENY_THRESHOLDS,
)
BLOCKED = stat(
    "Blocked",
    "Decisions denied because a block (detector or manual) matched the subject.",
    f"SELECT sumIf(requests, reason = 'blocked') AS blocked\n{_WHERE}",
    thresholds=((None, "red"),),
)
LATENCY_P99 = stat(
    "Latency p99",
    "The limiter's time to decide, 99th percentile over the range (merged quantile states).",
    # no rows rather than NaN when there were no decisions
    f"SELECT {LATENCY}[3] AS p99\n{_WHERE}\nHAVING sum(requests) > 0",
    unit="µs",
    decimals=0,
    thresholds=((None, "green"), (1000, "orange"), (5000, "red")),
)

ALLOWED_DENIED = timeseries(
    "Requests/s: allowed vs denied",
    "Decisions per second in each interval, stacked: allowed and denied.",
    f"SELECT\n    {TIME_BUCKET},\n"
    "    sum(allowed_requests) / $__interval_s AS allowed,\n"
    "    sum(denied_requests) / $__interval_s AS denied\n"
    f"{_WHERE}\nGROUP BY time\n{FILL_TIME}",
    min_interval="1m",
    unit="reqps",
    stacked=True,
    overrides=(
        Override("allowed", color="green", display_name="allowed"),
        Override("denied", color="red", display_name="denied"),
    ),
)
DENY_RATE_SERIES = timeseries(
    "Deny rate over time",
    "Denied decisions as a share of all decisions, per interval.",
    f"SELECT\n    {TIME_BUCKET},\n"
    "    sum(denied_requests) / nullIf(sum(requests), 0) AS deny_rate\n"
    f"{_WHERE}\nGROUP BY time\nORDER BY time",
    min_interval="1m",
    unit="percentunit",
    overrides=(Override("deny_rate", color="orange", display_name="deny rate"),),
)
DENIALS_BY_REASON = timeseries(
    "Denials by reason",
    "Denied decisions per second by reason: limit (over the rate limit), blocked,"
    " fail_closed (Redis down, tenant in closed mode), cost_exceeds_limit.",
    f"SELECT\n    {TIME_BUCKET},\n    reason,\n"
    "    sum(denied_requests) / $__interval_s AS denied\n"
    f"{_WHERE}\nGROUP BY time, reason\nHAVING sum(denied_requests) > 0\nORDER BY time, reason",
    min_interval="1m",
    unit="reqps",
    stacked=True,
    series_by="reason",
)
LATENCY_SERIES = timeseries(
    "Decision latency",
    "The limiter's time to decide: p50, p90 and p99 per interval, merged from the"
    " rollup's quantile states (never averaged).",
    f"SELECT time, q[1] AS p50, q[2] AS p90, q[3] AS p99\nFROM (\n"
    f"    SELECT {TIME_BUCKET}, {LATENCY} AS q\n"
    f"    FROM {TENANT_PER_MINUTE}\n    WHERE {TENANT} AND {MINUTES_IN_RANGE}\n"
    "    GROUP BY time\n)\nORDER BY time",
    min_interval="1m",
    unit="µs",
)
TOP_DENIED_KEYS = table(
    "Top denied keys",
    "The keys denied most often in the range, with their share of denials.",
    "SELECT\n    key AS `Key`,\n    sum(denied_requests) AS `Denied`,\n"
    "    sum(requests) AS `Requests`,\n    `Denied` / `Requests` AS `Deny rate`\n"
    f"{_KEYS_WHERE}\nGROUP BY key\nHAVING `Denied` > 0\nORDER BY `Denied` DESC, key\nLIMIT 20",
    overrides=(Override("Deny rate", unit="percentunit", decimals=1),),
)
TOP_ROUTES = table(
    "Top routes",
    "The routes with the most decisions (routes named by the checks), with denials and"
    " the p99 decision latency.",
    "SELECT\n    if(route = '', '(none)', route) AS `Route`,\n"
    "    sum(requests) AS `Requests`,\n    sum(denied_requests) AS `Denied`,\n"
    "    `Denied` / nullIf(`Requests`, 0) AS `Deny rate`,\n"
    f"    {LATENCY}[3] AS `p99 latency`\n"
    f"{_WHERE}\nGROUP BY `Route`\nORDER BY `Requests` DESC, `Route`\nLIMIT 20",
    overrides=(
        Override("Deny rate", unit="percentunit", decimals=1),
        Override("p99 latency", unit="µs", decimals=0),
    ),
)

OVERVIEW = Dashboard(
    uid="ratewatch-overview",
    title="RateWatch / Overview",
    description="Traffic, denials and decision latency of one tenant (per-minute rollup).",
    panels=(
        REQUESTS,
        REQUESTS_PER_SECOND,
        DENIED,
        DENY_RATE,
        BLOCKED,
        LATENCY_P99,
        ALLOWED_DENIED,
        DENY_RATE_SERIES,
        DENIALS_BY_REASON,
        LATENCY_SERIES,
        TOP_DENIED_KEYS,
        TOP_ROUTES,
    ),
    time_from="now-6h",
    refresh="30s",
)
