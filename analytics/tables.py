"""The database and table names, in one place; importing them loads no ClickHouse client
(the limiter builds its analytics SQL with them)."""

from __future__ import annotations

DATABASE = "ratewatch"
DECISIONS_TABLE = f"{DATABASE}.decisions"
MIGRATIONS_TABLE = f"{DATABASE}.schema_migrations"
AUDIT_TABLE = f"{DATABASE}.audit_log"
ROLLUP_TABLES = {
    "minute": f"{DATABASE}.decisions_per_minute",
    "hour": f"{DATABASE}.decisions_per_hour",
    "day": f"{DATABASE}.decisions_per_day",
}
# The same granularities summed over a tenant's keys (migration 0007): no key column, so
# tenant-wide queries read a few rows per bucket, and erasures leave them alone.
TENANT_ROLLUP_TABLES = {
    "minute": f"{DATABASE}.tenant_decisions_per_minute",
    "hour": f"{DATABASE}.tenant_decisions_per_hour",
    "day": f"{DATABASE}.tenant_decisions_per_day",
}
ALERTS_TABLE = f"{DATABASE}.alerts"
INCIDENTS_TABLE = f"{DATABASE}.incidents"
CONTROL_RECORDS_TABLE = f"{DATABASE}.control_records"
