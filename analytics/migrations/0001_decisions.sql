-- The raw decisions: one row per decision event (stream/events.py, DecisionEvent).
--
-- Optional strings (ip, route, user_agent, user_id, instance) are stored as '' rather than
-- Nullable: Nullable costs a null map per column and slower filters, and '' is never a
-- meaningful value for any of them, so queries read '' as "not given".
-- LowCardinality where a column has few distinct values per part (tenant, algorithm,
-- reason, route, instance); key, ip, user_agent and user_id are high-cardinality.
-- ip stays a String: a malformed address must not make a whole batch unwritable.
--
-- ORDER BY (tenant, hour, key, ts): a tenant's time range reads one contiguous run per hour,
-- and one key's history is one short run per hour, so both dashboards and per-key lookups
-- (usage API, detectors) skip almost everything.  Day partitions make the TTL a cheap
-- drop of whole parts (ttl_only_drop_parts).
--
-- non_replicated_deduplication_window: a non-replicated MergeTree remembers the hashes of
-- its last N inserted blocks only if this is set; with it, an insert that repeats an
-- insert_deduplication_token is dropped, which makes consumer replays idempotent.
-- {retention_days} is filled in by `ratewatch migrate --retention-days` (default 30).

CREATE DATABASE IF NOT EXISTS ratewatch;

CREATE TABLE IF NOT EXISTS ratewatch.decisions
(
    ts          DateTime64(3, 'UTC'),
    event_id    UUID,
    v           UInt16,
    tenant      LowCardinality(String),
    key         String,
    algorithm   LowCardinality(String),
    `limit`     UInt64,
    `window`    UInt32,
    cost        UInt64,
    allowed     Bool,
    remaining   Int64,
    reset_in    UInt32,
    reason      LowCardinality(String),
    ip          String DEFAULT '',
    route       LowCardinality(String) DEFAULT '',
    user_agent  String DEFAULT '' CODEC(ZSTD(1)),
    user_id     String DEFAULT '',
    latency_us  UInt32,
    instance    LowCardinality(String) DEFAULT '',
    -- abuse investigations look up one address; privacy requests look up one user
    INDEX ip_bloom ip TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX user_id_bloom user_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
PRIMARY KEY (tenant, toStartOfHour(ts), key)
ORDER BY (tenant, toStartOfHour(ts), key, ts)
TTL ts + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;
