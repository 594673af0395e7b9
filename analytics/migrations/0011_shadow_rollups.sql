-- Shadow denials in the rollups: count what the caller was answered.
--
-- A policy in shadow mode (docs/policies.md, migration 0010) answers the caller allowed when
-- its limits would deny; the raw row keeps allowed = false, reason 'limit' or
-- 'cost_exceeds_limit', and shadow = true, so analysts see what enforcing the policy would
-- deny.  The rollups' views counted such a row as denied, so the usage API, the console and
-- the Grafana panels reported denials nobody got.  From this migration on:
--   allowed_requests        what the caller was answered allowed, shadow denials included
--   denied_requests         what the caller was answered denied
--   shadow_denied_requests  the would-be denials among allowed_requests (new column)
-- The rule is the limiter's (limiter/policies/checks.py SHADOWED) and the detectors'
-- (detectors/features.py): a shadow row is answered allowed when its reason is 'limit' or
-- 'cost_exceeds_limit'; a block or the failure policy still denies in shadow mode.
-- `reason` stays what the policy decided, so would-be denials by reason are
--   SELECT reason, sum(shadow_denied_requests) FROM ratewatch.decisions_per_hour ...
--
-- Each rollup gets the column (SimpleAggregateFunction(sum, UInt64), 0 in the rows written
-- before), and its view is dropped and created again with the new counts, as 0004 did:
-- migrations run before a consumer writes, so no insert falls between the DROP and the
-- CREATE.
--
-- History: rows the old views wrote counted shadow denials as denied.  Each rollup gets
-- correction rows that move them, per group of the view, from denied to allowed and add them
-- to shadow_denied_requests, as the erasure's corrections do (analytics/erasure.py): the
-- counters are UInt64 sums, and adding the two's complement of a count subtracts it exactly
-- in every sum() and merge (requests, total_cost and the latency state are untouched: an
-- omitted latency column is an empty state).  A correction is what the raw table's shadow
-- denials of the group are minus what the rollup already counts in shadow_denied_requests,
-- only where positive; so a migration interrupted half-way and run again in full corrects
-- each group once, and rows the new views wrote are never corrected.  Residual: a shadow
-- denial whose raw row has already expired (the raw table's TTL is shorter than the hourly
-- and daily rollups') stays counted as denied in those rollups; shadow rows exist only
-- since 0010, so that can only concern rollups whose raw rows aged out in between.
-- The copies are not deduplicated (insert_deduplicate = 0), like 0007's backfill.

ALTER TABLE ratewatch.decisions_per_minute
    ADD COLUMN IF NOT EXISTS shadow_denied_requests SimpleAggregateFunction(sum, UInt64)
        AFTER denied_requests;

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
    toUInt64(countIf(allowed OR (shadow AND reason IN ('limit', 'cost_exceeds_limit')))) AS allowed_requests,
    toUInt64(countIf(NOT allowed AND NOT (shadow AND reason IN ('limit', 'cost_exceeds_limit')))) AS denied_requests,
    toUInt64(countIf(NOT allowed AND shadow AND reason IN ('limit', 'cost_exceeds_limit'))) AS shadow_denied_requests,
    toUInt64(sum(cost)) AS total_cost,
    quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_quantiles
FROM ratewatch.decisions
GROUP BY bucket, tenant, key, route, reason, segment;

INSERT INTO ratewatch.decisions_per_minute
    (bucket, tenant, key, route, reason, segment, requests, allowed_requests, denied_requests,
     shadow_denied_requests, total_cost)
SELECT bucket, tenant, key, route, reason, segment, 0, toUInt64(missing), toUInt64(-missing), toUInt64(missing), 0
FROM
(
    SELECT bucket, tenant, key, route, reason, segment, sum(n) AS missing
    FROM
    (
        SELECT toStartOfMinute(ts) AS bucket, tenant, key, route, reason, segment, toInt64(count()) AS n
        FROM ratewatch.decisions
        WHERE NOT allowed AND shadow AND reason IN ('limit', 'cost_exceeds_limit')
        GROUP BY bucket, tenant, key, route, reason, segment
        UNION ALL
        SELECT bucket, tenant, key, route, reason, segment, -toInt64(sum(shadow_denied_requests)) AS n
        FROM ratewatch.decisions_per_minute
        WHERE reason IN ('limit', 'cost_exceeds_limit')
        GROUP BY bucket, tenant, key, route, reason, segment
    )
    GROUP BY bucket, tenant, key, route, reason, segment
    HAVING missing > 0
)
SETTINGS insert_deduplicate = 0;

ALTER TABLE ratewatch.decisions_per_hour
    ADD COLUMN IF NOT EXISTS shadow_denied_requests SimpleAggregateFunction(sum, UInt64)
        AFTER denied_requests;

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
    toUInt64(countIf(allowed OR (shadow AND reason IN ('limit', 'cost_exceeds_limit')))) AS allowed_requests,
    toUInt64(countIf(NOT allowed AND NOT (shadow AND reason IN ('limit', 'cost_exceeds_limit')))) AS denied_requests,
    toUInt64(countIf(NOT allowed AND shadow AND reason IN ('limit', 'cost_exceeds_limit'))) AS shadow_denied_requests,
    toUInt64(sum(cost)) AS total_cost,
    quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_quantiles
FROM ratewatch.decisions
GROUP BY bucket, tenant, key, route, reason, segment;

INSERT INTO ratewatch.decisions_per_hour
    (bucket, tenant, key, route, reason, segment, requests, allowed_requests, denied_requests,
     shadow_denied_requests, total_cost)
SELECT bucket, tenant, key, route, reason, segment, 0, toUInt64(missing), toUInt64(-missing), toUInt64(missing), 0
FROM
(
    SELECT bucket, tenant, key, route, reason, segment, sum(n) AS missing
    FROM
    (
        SELECT toStartOfHour(ts) AS bucket, tenant, key, route, reason, segment, toInt64(count()) AS n
        FROM ratewatch.decisions
        WHERE NOT allowed AND shadow AND reason IN ('limit', 'cost_exceeds_limit')
        GROUP BY bucket, tenant, key, route, reason, segment
        UNION ALL
        SELECT bucket, tenant, key, route, reason, segment, -toInt64(sum(shadow_denied_requests)) AS n
        FROM ratewatch.decisions_per_hour
        WHERE reason IN ('limit', 'cost_exceeds_limit')
        GROUP BY bucket, tenant, key, route, reason, segment
    )
    GROUP BY bucket, tenant, key, route, reason, segment
    HAVING missing > 0
)
SETTINGS insert_deduplicate = 0;

ALTER TABLE ratewatch.decisions_per_day
    ADD COLUMN IF NOT EXISTS shadow_denied_requests SimpleAggregateFunction(sum, UInt64)
        AFTER denied_requests;

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
    toUInt64(countIf(allowed OR (shadow AND reason IN ('limit', 'cost_exceeds_limit')))) AS allowed_requests,
    toUInt64(countIf(NOT allowed AND NOT (shadow AND reason IN ('limit', 'cost_exceeds_limit')))) AS denied_requests,
    toUInt64(countIf(NOT allowed AND shadow AND reason IN ('limit', 'cost_exceeds_limit'))) AS shadow_denied_requests,
    toUInt64(sum(cost)) AS total_cost,
    quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_quantiles
FROM ratewatch.decisions
GROUP BY bucket, tenant, key, route, reason, segment;

INSERT INTO ratewatch.decisions_per_day
    (bucket, tenant, key, route, reason, segment, requests, allowed_requests, denied_requests,
     shadow_denied_requests, total_cost)
SELECT bucket, tenant, key, route, reason, segment, 0, toUInt64(missing), toUInt64(-missing), toUInt64(missing), 0
FROM
(
    SELECT bucket, tenant, key, route, reason, segment, sum(n) AS missing
    FROM
    (
        SELECT toStartOfDay(ts) AS bucket, tenant, key, route, reason, segment, toInt64(count()) AS n
        FROM ratewatch.decisions
        WHERE NOT allowed AND shadow AND reason IN ('limit', 'cost_exceeds_limit')
        GROUP BY bucket, tenant, key, route, reason, segment
        UNION ALL
        SELECT bucket, tenant, key, route, reason, segment, -toInt64(sum(shadow_denied_requests)) AS n
        FROM ratewatch.decisions_per_day
        WHERE reason IN ('limit', 'cost_exceeds_limit')
        GROUP BY bucket, tenant, key, route, reason, segment
    )
    GROUP BY bucket, tenant, key, route, reason, segment
    HAVING missing > 0
)
SETTINGS insert_deduplicate = 0;

ALTER TABLE ratewatch.tenant_decisions_per_minute
    ADD COLUMN IF NOT EXISTS shadow_denied_requests SimpleAggregateFunction(sum, UInt64)
        AFTER denied_requests;

DROP VIEW IF EXISTS ratewatch.tenant_decisions_per_minute_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS ratewatch.tenant_decisions_per_minute_mv
TO ratewatch.tenant_decisions_per_minute
AS SELECT
    toStartOfMinute(ts) AS bucket,
    tenant,
    route,
    reason,
    segment,
    toUInt64(count()) AS requests,
    toUInt64(countIf(allowed OR (shadow AND reason IN ('limit', 'cost_exceeds_limit')))) AS allowed_requests,
    toUInt64(countIf(NOT allowed AND NOT (shadow AND reason IN ('limit', 'cost_exceeds_limit')))) AS denied_requests,
    toUInt64(countIf(NOT allowed AND shadow AND reason IN ('limit', 'cost_exceeds_limit'))) AS shadow_denied_requests,
    toUInt64(sum(cost)) AS total_cost,
    quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_quantiles
FROM ratewatch.decisions
GROUP BY bucket, tenant, route, reason, segment;

INSERT INTO ratewatch.tenant_decisions_per_minute
    (bucket, tenant, route, reason, segment, requests, allowed_requests, denied_requests,
     shadow_denied_requests, total_cost)
SELECT bucket, tenant, route, reason, segment, 0, toUInt64(missing), toUInt64(-missing), toUInt64(missing), 0
FROM
(
    SELECT bucket, tenant, route, reason, segment, sum(n) AS missing
    FROM
    (
        SELECT toStartOfMinute(ts) AS bucket, tenant, route, reason, segment, toInt64(count()) AS n
        FROM ratewatch.decisions
        WHERE NOT allowed AND shadow AND reason IN ('limit', 'cost_exceeds_limit')
        GROUP BY bucket, tenant, route, reason, segment
        UNION ALL
        SELECT bucket, tenant, route, reason, segment, -toInt64(sum(shadow_denied_requests)) AS n
        FROM ratewatch.tenant_decisions_per_minute
        WHERE reason IN ('limit', 'cost_exceeds_limit')
        GROUP BY bucket, tenant, route, reason, segment
    )
    GROUP BY bucket, tenant, route, reason, segment
    HAVING missing > 0
)
SETTINGS insert_deduplicate = 0;

ALTER TABLE ratewatch.tenant_decisions_per_hour
    ADD COLUMN IF NOT EXISTS shadow_denied_requests SimpleAggregateFunction(sum, UInt64)
        AFTER denied_requests;

DROP VIEW IF EXISTS ratewatch.tenant_decisions_per_hour_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS ratewatch.tenant_decisions_per_hour_mv
TO ratewatch.tenant_decisions_per_hour
AS SELECT
    toStartOfHour(ts) AS bucket,
    tenant,
    route,
    reason,
    segment,
    toUInt64(count()) AS requests,
    toUInt64(countIf(allowed OR (shadow AND reason IN ('limit', 'cost_exceeds_limit')))) AS allowed_requests,
    toUInt64(countIf(NOT allowed AND NOT (shadow AND reason IN ('limit', 'cost_exceeds_limit')))) AS denied_requests,
    toUInt64(countIf(NOT allowed AND shadow AND reason IN ('limit', 'cost_exceeds_limit'))) AS shadow_denied_requests,
    toUInt64(sum(cost)) AS total_cost,
    quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_quantiles
FROM ratewatch.decisions
GROUP BY bucket, tenant, route, reason, segment;

INSERT INTO ratewatch.tenant_decisions_per_hour
    (bucket, tenant, route, reason, segment, requests, allowed_requests, denied_requests,
     shadow_denied_requests, total_cost)
SELECT bucket, tenant, route, reason, segment, 0, toUInt64(missing), toUInt64(-missing), toUInt64(missing), 0
FROM
(
    SELECT bucket, tenant, route, reason, segment, sum(n) AS missing
    FROM
    (
        SELECT toStartOfHour(ts) AS bucket, tenant, route, reason, segment, toInt64(count()) AS n
        FROM ratewatch.decisions
        WHERE NOT allowed AND shadow AND reason IN ('limit', 'cost_exceeds_limit')
        GROUP BY bucket, tenant, route, reason, segment
        UNION ALL
        SELECT bucket, tenant, route, reason, segment, -toInt64(sum(shadow_denied_requests)) AS n
        FROM ratewatch.tenant_decisions_per_hour
        WHERE reason IN ('limit', 'cost_exceeds_limit')
        GROUP BY bucket, tenant, route, reason, segment
    )
    GROUP BY bucket, tenant, route, reason, segment
    HAVING missing > 0
)
SETTINGS insert_deduplicate = 0;

ALTER TABLE ratewatch.tenant_decisions_per_day
    ADD COLUMN IF NOT EXISTS shadow_denied_requests SimpleAggregateFunction(sum, UInt64)
        AFTER denied_requests;

DROP VIEW IF EXISTS ratewatch.tenant_decisions_per_day_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS ratewatch.tenant_decisions_per_day_mv
TO ratewatch.tenant_decisions_per_day
AS SELECT
    toStartOfDay(ts) AS bucket,
    tenant,
    route,
    reason,
    segment,
    toUInt64(count()) AS requests,
    toUInt64(countIf(allowed OR (shadow AND reason IN ('limit', 'cost_exceeds_limit')))) AS allowed_requests,
    toUInt64(countIf(NOT allowed AND NOT (shadow AND reason IN ('limit', 'cost_exceeds_limit')))) AS denied_requests,
    toUInt64(countIf(NOT allowed AND shadow AND reason IN ('limit', 'cost_exceeds_limit'))) AS shadow_denied_requests,
    toUInt64(sum(cost)) AS total_cost,
    quantilesState(0.5, 0.9, 0.99)(latency_us) AS latency_quantiles
FROM ratewatch.decisions
GROUP BY bucket, tenant, route, reason, segment;

INSERT INTO ratewatch.tenant_decisions_per_day
    (bucket, tenant, route, reason, segment, requests, allowed_requests, denied_requests,
     shadow_denied_requests, total_cost)
SELECT bucket, tenant, route, reason, segment, 0, toUInt64(missing), toUInt64(-missing), toUInt64(missing), 0
FROM
(
    SELECT bucket, tenant, route, reason, segment, sum(n) AS missing
    FROM
    (
        SELECT toStartOfDay(ts) AS bucket, tenant, route, reason, segment, toInt64(count()) AS n
        FROM ratewatch.decisions
        WHERE NOT allowed AND shadow AND reason IN ('limit', 'cost_exceeds_limit')
        GROUP BY bucket, tenant, route, reason, segment
        UNION ALL
        SELECT bucket, tenant, route, reason, segment, -toInt64(sum(shadow_denied_requests)) AS n
        FROM ratewatch.tenant_decisions_per_day
        WHERE reason IN ('limit', 'cost_exceeds_limit')
        GROUP BY bucket, tenant, route, reason, segment
    )
    GROUP BY bucket, tenant, route, reason, segment
    HAVING missing > 0
)
SETTINGS insert_deduplicate = 0;
