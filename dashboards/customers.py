"""The Customers & segments dashboard: usage patterns by customer segment (the tier a check
or its API key names) and the heaviest keys.  For product managers; read from the hourly
rollups, so weeks of history stay fast: the tenant rollup, but for the panels about keys."""

from __future__ import annotations

from dashboards.model import Dashboard, Override
from dashboards.panels import barchart, stat, table, timeseries
from dashboards.sql import HOURS_IN_RANGE, PER_HOUR, TENANT, TENANT_PER_HOUR, TIME_BUCKET

_WHERE = f"FROM {TENANT_PER_HOUR}\nWHERE {TENANT}\n  AND {HOURS_IN_RANGE}"
_KEYS_WHERE = f"FROM {PER_HOUR}\nWHERE {TENANT}\n  AND {HOURS_IN_RANGE}"
# '' is "no segment"; a series or a row needs a name
_SEGMENT = "if(segment = '', '(none)', segment)"
_PERCENT = Override("Deny rate", unit="percentunit", decimals=1)

ACTIVE_KEYS = stat(
    "Active keys",
    "Keys with at least one decision in the range.",
    "SELECT count() AS active_keys\nFROM (\n"
    f"    SELECT key\n    FROM {PER_HOUR}\n    WHERE {TENANT} AND {HOURS_IN_RANGE}\n"
    "    GROUP BY key\n    HAVING sum(requests) > 0\n)",
    width=6,
)
SEGMENTS = stat(
    "Active segments",
    "Customer segments with decisions in the range (no segment counts as one).",
    "SELECT count() AS segments\nFROM (\n"
    f"    SELECT segment\n    FROM {TENANT_PER_HOUR}\n    WHERE {TENANT} AND {HOURS_IN_RANGE}\n"
    "    GROUP BY segment\n    HAVING sum(requests) > 0\n)",
    width=6,
)
REQUESTS = stat(
    "Requests",
    "Decisions in the range (whole hours).",
    f"SELECT sum(requests) AS requests\n{_WHERE}",
    width=6,
)
COST = stat(
    "Cost used",
    "The sum of the checks' cost: what the tenant's customers consumed of their limits.",
    f"SELECT sum(total_cost) AS cost\n{_WHERE}",
    width=6,
)

REQUESTS_BY_SEGMENT = timeseries(
    "Requests by segment",
    "Decisions per hour (or per interval) for each customer segment.",
    f"SELECT\n    {TIME_BUCKET},\n    {_SEGMENT} AS segment_name,\n"
    "    sum(requests) AS requests\n"
    f"{_WHERE}\nGROUP BY time, segment_name\nORDER BY time, segment_name",
    min_interval="1h",
    stacked=True,
    series_by="segment_name",
)
DENY_RATE_BY_SEGMENT_SERIES = timeseries(
    "Deny rate by segment",
    "Denied decisions as a share of each segment's decisions, per interval.",
    f"SELECT\n    {TIME_BUCKET},\n    {_SEGMENT} AS segment_name,\n"
    "    sum(denied_requests) / nullIf(sum(requests), 0) AS deny_rate\n"
    f"{_WHERE}\nGROUP BY time, segment_name\nORDER BY time, segment_name",
    min_interval="1h",
    unit="percentunit",
    series_by="segment_name",
)
SEGMENT_TOTALS = barchart(
    "Allowed and denied by segment",
    "Each segment's decisions in the range, allowed and denied.",
    f"SELECT\n    {_SEGMENT} AS `Segment`,\n"
    "    sum(allowed_requests) AS `Allowed`,\n    sum(denied_requests) AS `Denied`\n"
    f"{_WHERE}\nGROUP BY `Segment`\nORDER BY `Allowed` + `Denied` DESC, `Segment`",
    x_field="Segment",
    stacked=True,
    overrides=(Override("Allowed", color="green"), Override("Denied", color="red")),
)
SEGMENTS_TABLE = table(
    "Segments",
    "Usage per segment: active keys, decisions, deny rate, cost, and decisions per key.",
    "SELECT\n    segment_name AS `Segment`,\n    countIf(key_requests > 0) AS `Keys`,\n"
    "    sum(key_requests) AS `Requests`,\n    sum(key_denied) AS `Denied`,\n"
    "    `Denied` / nullIf(`Requests`, 0) AS `Deny rate`,\n    sum(key_cost) AS `Cost`,\n"
    "    `Requests` / nullIf(`Keys`, 0) AS `Requests per key`\n"
    "FROM (\n"
    f"    SELECT\n        {_SEGMENT} AS segment_name,\n        key,\n"
    "        sum(requests) AS key_requests,\n        sum(denied_requests) AS key_denied,\n"
    "        sum(total_cost) AS key_cost\n"
    f"    FROM {PER_HOUR}\n    WHERE {TENANT} AND {HOURS_IN_RANGE}\n"
    "    GROUP BY segment_name, key\n)\n"
    "GROUP BY segment_name\nORDER BY `Requests` DESC, segment_name",
    overrides=(_PERCENT, Override("Requests per key", decimals=1)),
)
TOP_KEYS = table(
    "Top keys",
    "The keys (customers, users, integrations) with the most decisions in the range, their"
    " latest segment and when they were last seen.",
    "SELECT\n    key AS `Key`,\n"
    f"    argMax({_SEGMENT}, bucket) AS `Segment`,\n"
    "    sum(requests) AS `Requests`,\n    sum(denied_requests) AS `Denied`,\n"
    "    `Denied` / nullIf(`Requests`, 0) AS `Deny rate`,\n"
    "    sum(total_cost) AS `Cost`,\n    max(bucket) AS `Last hour seen`\n"
    f"{_KEYS_WHERE}\nGROUP BY key\nHAVING `Requests` > 0\nORDER BY `Requests` DESC, key\nLIMIT 50",
    overrides=(_PERCENT,),
    width=24,
)

CUSTOMERS = Dashboard(
    uid="ratewatch-customers",
    title="RateWatch / Customers & segments",
    description="Usage patterns by customer segment and the heaviest keys (hourly rollup).",
    panels=(
        ACTIVE_KEYS,
        SEGMENTS,
        REQUESTS,
        COST,
        REQUESTS_BY_SEGMENT,
        DENY_RATE_BY_SEGMENT_SERIES,
        SEGMENT_TOTALS,
        SEGMENTS_TABLE,
        TOP_KEYS,
    ),
    time_from="now-7d",
    refresh="5m",
)
