-- Tenant-level rollups: per minute, hour and day by tenant, route, reason and segment,
-- without the key.  A tenant-wide question (its traffic, denials, routes, segments,
-- latency) read from the per-key rollups reads one row per key and bucket, millions per
-- hour for a tenant with millions of keys; these tables hold a handful per bucket.  The
-- usage API (analytics/usage.py) and the dashboards' tenant-wide panels read them whenever
-- a query neither filters nor groups by key.
--
-- Columns, engine, partitions, TTLs and settings are those of the per-key rollups (0002,
-- 0004) less `key`: SimpleAggregateFunction(sum) counters and a quantiles state, summed and
-- merged by every query; ORDER BY (tenant, bucket, route, reason, segment), so a tenant's
-- time range is one contiguous run.  Each is fed by its own materialized view on
-- ratewatch.decisions (not on a per-key rollup), with the same GROUP BY less key.
--
-- Replays: the targets set non_replicated_deduplication_window like the per-key rollups, so
-- an insert into ratewatch.decisions that repeats its insert_deduplication_token (with
-- deduplicate_blocks_in_dependent_materialized_views = 1) is dropped here too.
--
-- Backfill: the history already in the per-key rollups is copied once, summed over keys
-- (counters with sum(), latency states with quantilesMergeState), so the new tables answer
-- for the past as the per-key ones do.  Per table: create, empty, copy, then the view.
-- Migrations run before any consumer writes (the pipeline worker and `ratewatch stream`
-- migrate before they consume), so no decision arrives between the copy and the view: none
-- is missed, none counted twice.  analytics/migrate.py records a file only after all its
-- statements ran, and runs an interrupted one again in full; the TRUNCATE makes that run's
-- copy start from an empty table, so an earlier copy, finished or cut short, is never
-- counted twice.  (Copying only into an empty table would keep a copy cut short.)  Before
-- the file is recorded a table holds nothing but such a copy, so emptying it loses nothing.
-- The copy is not deduplicated (insert_deduplicate = 0): a second copy must never be
-- dropped as a repeat of the first.  It aggregates in the source's order (tenant, bucket
-- first), so it finishes one bucket's groups before the next instead of holding the whole
-- history's in memory.
--
-- Residual risk: a batch whose insert a crash cut short before this migration (raw rows and
-- some per-key rollups written, no ledger entry: 0003) and that the consumer completes
-- after it counts twice in the tenant rollups whose per-key rollup had it: once from the
-- copy, once from the view.  Stopping the consumers cleanly before upgrading avoids it.
--
-- Privacy: these tables have no key and no user id, so an erasure (analytics/erasure.py)
-- neither deletes nor corrects their rows; they keep counting an erased user's decisions,
-- anonymously.  The copy is made from the per-key rollups as erasures left them.
--
-- {minute_retention_days}, {hour_retention_days} and {day_retention_days} are those of the
-- per-key rollups (filled in by `ratewatch migrate`).

CREATE TABLE IF NOT EXISTS ratewatch.tenant_decisions_per_minute
(
    bucket              DateTime('UTC'),
    tenant              LowCardinality(String),
    route               LowCardinality(String),
    reason              LowCardinality(String),
    segment             LowCardinality(String),
    requests            SimpleAggregateFunction(sum, UInt64),
    allowed_requests    SimpleAggregateFunction(sum, UInt64),
    denied_requests     SimpleAggregateFunction(sum, UInt64),
    total_cost          SimpleAggregateFunction(sum, UInt64),
    latency_quantiles   AggregateFunction(quantiles(0.5, 0.9, 0.99), UInt32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(bucket)
ORDER BY (tenant, bucket, route, reason, segment)
TTL bucket + INTERVAL {minute_retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;

TRUNCATE TABLE ratewatch.tenant_decisions_per_minute;

INSERT INTO ratewatch.tenant_decisions_per_minute
    (bucket, tenant, route, reason, segment, requests, allowed_requests, denied_requests,
     total_cost, latency_quantiles)
SELECT
    bucket,
    tenant,
    route,
    reason,
    segment,
    sum(requests),
    sum(allowed_requests),
    sum(denied_requests),
    sum(total_cost),
    quantilesMergeState(0.5, 0.9, 0.99)(latency_quantiles)
FROM ratewatch.decisions_per_minute
GROUP BY tenant, bucket, route, reason, segment
SETTINGS insert_deduplicate = 0, optimize_aggregation_in_order = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS ratewatch.tenant_decisions_per_minute_mv
TO ratewatch.tenant_decisions_per_minute
AS SELECT
    toStartOfMinute(ts) AS bucket,
    tenant,
    route,
    reason,
    segment,
    toUInt64(count()) AS requests,
    toUInt64(countIf(allowed)) AS allowed_requests,
    toUInt64(countIf(NOT allowed)) AS denied_requests,
    toUInt64(sum(cost)) AS total_cost,
    quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_quantiles
FROM ratewatch.decisions
GROUP BY bucket, tenant, route, reason, segment;

CREATE TABLE IF NOT EXISTS ratewatch.tenant_decisions_per_hour
(
    bucket              DateTime('UTC'),
    tenant              LowCardinality(String),
    route               LowCardinality(String),
    reason              LowCardinality(String),
    segment             LowCardinality(String),
    requests            SimpleAggregateFunction(sum, UInt64),
    allowed_requests    SimpleAggregateFunction(sum, UInt64),
    denied_requests     SimpleAggregateFunction(sum, UInt64),
    total_cost          SimpleAggregateFunction(sum, UInt64),
    latency_quantiles   AggregateFunction(quantiles(0.5, 0.9, 0.99), UInt32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toMonday(bucket)
ORDER BY (tenant, bucket, route, reason, segment)
TTL bucket + INTERVAL {hour_retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;

TRUNCATE TABLE ratewatch.tenant_decisions_per_hour;

INSERT INTO ratewatch.tenant_decisions_per_hour
    (bucket, tenant, route, reason, segment, requests, allowed_requests, denied_requests,
     total_cost, latency_quantiles)
SELECT
    bucket,
    tenant,
    route,
    reason,
    segment,
    sum(requests),
    sum(allowed_requests),
    sum(denied_requests),
    sum(total_cost),
    quantilesMergeState(0.5, 0.9, 0.99)(latency_quantiles)
FROM ratewatch.decisions_per_hour
GROUP BY tenant, bucket, route, reason, segment
SETTINGS insert_deduplicate = 0, optimize_aggregation_in_order = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS ratewatch.tenant_decisions_per_hour_mv
TO ratewatch.tenant_decisions_per_hour
AS SELECT
    toStartOfHour(ts) AS bucket,
    tenant,
    route,
    reason,
    segment,
    toUInt64(count()) AS requests,
    toUInt64(countIf(allowed)) AS allowed_requests,
    toUInt64(countIf(NOT allowed)) AS denied_requests,
    toUInt64(sum(cost)) AS total_cost,
    quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_quantiles
FROM ratewatch.decisions
GROUP BY bucket, tenant, route, reason, segment;

CREATE TABLE IF NOT EXISTS ratewatch.tenant_decisions_per_day
(
    bucket              DateTime('UTC'),
    tenant              LowCardinality(String),
    route               LowCardinality(String),
    reason              LowCardinality(String),
    segment             LowCardinality(String),
    requests            SimpleAggregateFunction(sum, UInt64),
    allowed_requests    SimpleAggregateFunction(sum, UInt64),
    denied_requests     SimpleAggregateFunction(sum, UInt64),
    total_cost          SimpleAggregateFunction(sum, UInt64),
    latency_quantiles   AggregateFunction(quantiles(0.5, 0.9, 0.99), UInt32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (tenant, bucket, route, reason, segment)
TTL bucket + INTERVAL {day_retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;

TRUNCATE TABLE ratewatch.tenant_decisions_per_day;

INSERT INTO ratewatch.tenant_decisions_per_day
    (bucket, tenant, route, reason, segment, requests, allowed_requests, denied_requests,
     total_cost, latency_quantiles)
SELECT
    bucket,
    tenant,
    route,
    reason,
    segment,
    sum(requests),
    sum(allowed_requests),
    sum(denied_requests),
    sum(total_cost),
    quantilesMergeState(0.5, 0.9, 0.99)(latency_quantiles)
FROM ratewatch.decisions_per_day
GROUP BY tenant, bucket, route, reason, segment
SETTINGS insert_deduplicate = 0, optimize_aggregation_in_order = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS ratewatch.tenant_decisions_per_day_mv
TO ratewatch.tenant_decisions_per_day
AS SELECT
    toStartOfDay(ts) AS bucket,
    tenant,
    route,
    reason,
    segment,
    toUInt64(count()) AS requests,
    toUInt64(countIf(allowed)) AS allowed_requests,
    toUInt64(countIf(NOT allowed)) AS denied_requests,
    toUInt64(sum(cost)) AS total_cost,
    quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_quantiles
FROM ratewatch.decisions
GROUP BY bucket, tenant, route, reason, segment;
