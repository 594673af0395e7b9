-- Per-minute, per-hour and per-day rollups of ratewatch.decisions by tenant, key, route and
-- reason, kept by materialized views on every insert into the raw table.
--
-- Counts are SimpleAggregateFunction(sum, UInt64): AggregatingMergeTree adds rows with the
-- same key when it merges, and a query adds them with sum().  Latency is a quantiles state,
-- merged with quantilesMerge(0.5, 0.9, 0.99)(latency_quantiles): quantiles and averages are
-- never summed or averaged across rows (an average would be sum(total)/sum(requests)).
-- Rows with the same key may still be unmerged, so every query aggregates:
--   SELECT bucket, sum(requests), sum(denied_requests),
--          quantilesMerge(0.5, 0.9, 0.99)(latency_quantiles)
--   FROM ratewatch.decisions_per_hour WHERE tenant = 't' GROUP BY bucket
--
-- Replays: each target sets non_replicated_deduplication_window, so when an insert into
-- ratewatch.decisions repeats its insert_deduplication_token (with
-- deduplicate_blocks_in_dependent_materialized_views = 1), the views' blocks are dropped
-- too.  Without the window on a target, the view would count a replayed batch again.
--
-- Retention grows with the granularity; the migrator fills in
-- {minute_retention_days} (= the raw retention), {hour_retention_days} (at least 90) and
-- {day_retention_days} (at least 730).

CREATE TABLE IF NOT EXISTS ratewatch.decisions_per_minute
(
    bucket              DateTime('UTC'),
    tenant              LowCardinality(String),
    key                 String,
    route               LowCardinality(String),
    reason              LowCardinality(String),
    requests            SimpleAggregateFunction(sum, UInt64),
    allowed_requests    SimpleAggregateFunction(sum, UInt64),
    denied_requests     SimpleAggregateFunction(sum, UInt64),
    total_cost          SimpleAggregateFunction(sum, UInt64),
    latency_quantiles   AggregateFunction(quantiles(0.5, 0.9, 0.99), UInt32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(bucket)
ORDER BY (tenant, bucket, key, route, reason)
TTL bucket + INTERVAL {minute_retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS ratewatch.decisions_per_minute_mv
TO ratewatch.decisions_per_minute
AS SELECT
    toStartOfMinute(ts) AS bucket,
    tenant,
    key,
    route,
    reason,
    toUInt64(count()) AS requests,
    toUInt64(countIf(allowed)) AS allowed_requests,
    toUInt64(countIf(NOT allowed)) AS denied_requests,
    toUInt64(sum(cost)) AS total_cost,
    quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_quantiles
FROM ratewatch.decisions
GROUP BY bucket, tenant, key, route, reason;

CREATE TABLE IF NOT EXISTS ratewatch.decisions_per_hour
(
    bucket              DateTime('UTC'),
    tenant              LowCardinality(String),
    key                 String,
    route               LowCardinality(String),
    reason              LowCardinality(String),
    requests            SimpleAggregateFunction(sum, UInt64),
    allowed_requests    SimpleAggregateFunction(sum, UInt64),
    denied_requests     SimpleAggregateFunction(sum, UInt64),
    total_cost          SimpleAggregateFunction(sum, UInt64),
    latency_quantiles   AggregateFunction(quantiles(0.5, 0.9, 0.99), UInt32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toMonday(bucket)
ORDER BY (tenant, bucket, key, route, reason)
TTL bucket + INTERVAL {hour_retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS ratewatch.decisions_per_hour_mv
TO ratewatch.decisions_per_hour
AS SELECT
    toStartOfHour(ts) AS bucket,
    tenant,
    key,
    route,
    reason,
    toUInt64(count()) AS requests,
    toUInt64(countIf(allowed)) AS allowed_requests,
    toUInt64(countIf(NOT allowed)) AS denied_requests,
    toUInt64(sum(cost)) AS total_cost,
    quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_quantiles
FROM ratewatch.decisions
GROUP BY bucket, tenant, key, route, reason;

CREATE TABLE IF NOT EXISTS ratewatch.decisions_per_day
(
    bucket              DateTime('UTC'),
    tenant              LowCardinality(String),
    key                 String,
    route               LowCardinality(String),
    reason              LowCardinality(String),
    requests            SimpleAggregateFunction(sum, UInt64),
    allowed_requests    SimpleAggregateFunction(sum, UInt64),
    denied_requests     SimpleAggregateFunction(sum, UInt64),
    total_cost          SimpleAggregateFunction(sum, UInt64),
    latency_quantiles   AggregateFunction(quantiles(0.5, 0.9, 0.99), UInt32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (tenant, bucket, key, route, reason)
TTL bucket + INTERVAL {day_retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS ratewatch.decisions_per_day_mv
TO ratewatch.decisions_per_day
AS SELECT
    toStartOfDay(ts) AS bucket,
    tenant,
    key,
    route,
    reason,
    toUInt64(count()) AS requests,
    toUInt64(countIf(allowed)) AS allowed_requests,
    toUInt64(countIf(NOT allowed)) AS denied_requests,
    toUInt64(sum(cost)) AS total_cost,
    quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_quantiles
FROM ratewatch.decisions
GROUP BY bucket, tenant, key, route, reason;
