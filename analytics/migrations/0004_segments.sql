-- Customer segments (tiers): a label such as "free", "pro" or "enterprise" that a check
-- carries (or its API key supplies), so usage by segment is one query on a rollup.
--
-- The raw table gets a plain column; each rollup gets the column appended to its sorting
-- key, the only change to a sorting key ClickHouse allows on a live table (a new column
-- without a DEFAULT expression: it defaults to '').  Rows written before this migration
-- keep segment = '' ("no segment").
--
-- The views are dropped and created again with the column in their GROUP BY.  Migrations
-- run before a consumer starts writing, so no insert falls between the DROP and the
-- CREATE; a migration interrupted between them runs again in full.

ALTER TABLE ratewatch.decisions
    ADD COLUMN IF NOT EXISTS segment LowCardinality(String) DEFAULT '' AFTER user_id;

ALTER TABLE ratewatch.decisions_per_minute
    ADD COLUMN IF NOT EXISTS segment LowCardinality(String) AFTER reason,
    MODIFY ORDER BY (tenant, bucket, key, route, reason, segment);

ALTER TABLE ratewatch.decisions_per_hour
    ADD COLUMN IF NOT EXISTS segment LowCardinality(String) AFTER reason,
    MODIFY ORDER BY (tenant, bucket, key, route, reason, segment);

ALTER TABLE ratewatch.decisions_per_day
    ADD COLUMN IF NOT EXISTS segment LowCardinality(String) AFTER reason,
    MODIFY ORDER BY (tenant, bucket, key, route, reason, segment);

DROP VIEW IF EXISTS ratewatch.decisions_per_minute_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS ratewatch.decisions_per_minute_mv
TO ratewatch.decisions_per_minute
AS SELECT
    toStartOfMinute(ts) AS bucket,
    tenant,
    key,
    route,
    reason,
    segment,
    toUInt64(count()) AS requests,
    toUInt64(countIf(allowed)) AS allowed_requests,
    toUInt64(countIf(NOT allowed)) AS denied_requests,
    toUInt64(sum(cost)) AS total_cost,
    quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_quantiles
FROM ratewatch.decisions
GROUP BY bucket, tenant, key, route, reason, segment;

DROP VIEW IF EXISTS ratewatch.decisions_per_hour_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS ratewatch.decisions_per_hour_mv
TO ratewatch.decisions_per_hour
AS SELECT
    toStartOfHour(ts) AS bucket,
    tenant,
    key,
    route,
    reason,
    segment,
    toUInt64(count()) AS requests,
    toUInt64(countIf(allowed)) AS allowed_requests,
    toUInt64(countIf(NOT allowed)) AS denied_requests,
    toUInt64(sum(cost)) AS total_cost,
    quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_quantiles
FROM ratewatch.decisions
GROUP BY bucket, tenant, key, route, reason, segment;

DROP VIEW IF EXISTS ratewatch.decisions_per_day_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS ratewatch.decisions_per_day_mv
TO ratewatch.decisions_per_day
AS SELECT
    toStartOfDay(ts) AS bucket,
    tenant,
    key,
    route,
    reason,
    segment,
    toUInt64(count()) AS requests,
    toUInt64(countIf(allowed)) AS allowed_requests,
    toUInt64(countIf(NOT allowed)) AS denied_requests,
    toUInt64(sum(cost)) AS total_cost,
    quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_quantiles
FROM ratewatch.decisions
GROUP BY bucket, tenant, key, route, reason, segment;
