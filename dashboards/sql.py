"""SQL shared by the dashboards' panels: the tables, the tenant filter, the time ranges.

Every panel reads one tenant: ``tenant = ${tenant:singlequote}`` (Grafana quotes the
variable's value and escapes its quotes).  The rollups are read with ``sum()`` and
``quantilesMerge()`` only (docs/analytics.md says why), the alerts and the audit log with
``FINAL`` (an entry may be delivered twice).

A panel that neither shows nor filters by key reads a tenant rollup (``TENANT_PER_*``,
migration 0007): the per-key rows summed over keys, so its query reads a few rows per
bucket however many keys the tenant has, and answers the same.  Only the panels about keys
read the per-key rollups.
"""

from __future__ import annotations

from analytics.tables import ALERTS_TABLE, AUDIT_TABLE, ROLLUP_TABLES, TENANT_ROLLUP_TABLES

TENANT_VARIABLE = "tenant"
TENANT = "tenant = ${tenant:singlequote}"
TENANTS_QUERY = f"SELECT DISTINCT tenant FROM {TENANT_ROLLUP_TABLES['hour']} ORDER BY tenant"

PER_MINUTE = ROLLUP_TABLES["minute"]
PER_HOUR = ROLLUP_TABLES["hour"]
TENANT_PER_MINUTE = TENANT_ROLLUP_TABLES["minute"]
TENANT_PER_HOUR = TENANT_ROLLUP_TABLES["hour"]
ALERTS = ALERTS_TABLE
AUDIT_LOG = AUDIT_TABLE

# Minute buckets inside the dashboard's range.
MINUTES_IN_RANGE = "$__timeFilter(bucket)"
# Hour buckets overlapping the range: the hour the range starts in counts whole.
HOURS_IN_RANGE = "bucket >= toStartOfHour($__fromTime) AND bucket <= $__toTime"

# A panel's time buckets, $__interval_s wide; its panel's min_interval is the rollup's
# granularity, so that a bucket always holds whole rollup buckets.
TIME_BUCKET = "$__timeInterval(bucket) AS time"
# Empty buckets of a count series as zeros rather than gaps.
FILL_TIME = (
    "ORDER BY time WITH FILL"
    " FROM toStartOfInterval($__fromTime, INTERVAL $__interval_s second)"
    " TO $__toTime STEP $__interval_s"
)
LATENCY = "quantilesMerge(0.5, 0.9, 0.99)(latency_quantiles)"
