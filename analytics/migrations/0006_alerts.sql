-- Alerts: one row per action of the abuse detection that an operator should hear about
-- (stream/alerts.py, AlertEvent: a block made, escalated, shadowed, or refused by the
-- tenant's cap), for GET /v1/alerts, dashboards and analysts' queries.
--
-- Rows arrive like the audit log's (migration 0005): through the alert outbox (a Redis
-- stream) and its drain (stream/outbox_drain.py), at least once, with a repeated batch
-- dropped by its insert_deduplication_token and a repeated event folded by
-- ReplacingMergeTree on the same sorting key; readers that must not see a repeat say FINAL.
--
-- detector and score are copied out of the explanation, because they are what alerts are
-- filtered and ranked by; the explanation itself (reasons, signals with values and
-- baselines, threshold, detector version) is kept whole as JSON text.  block_id is '' when
-- no block was made (block.skipped_cap); ttl_seconds and offence are NULL then.
--
-- 90 days' TTL: an alert is a notification and names its subject (an address, a key, a
-- user id); the durable record of every block is its audit entry.  Privacy requests erase
-- a user's alerts (analytics/erasure.py).

CREATE TABLE IF NOT EXISTS ratewatch.alerts
(
    ts            DateTime64(3, 'UTC'),
    event_id      UUID,
    v             UInt16,
    tenant        LowCardinality(String),
    kind          LowCardinality(String),
    scope         LowCardinality(String),
    subject       String,
    block_id      String,
    mode          LowCardinality(String),
    ttl_seconds   Nullable(UInt32),
    offence       Nullable(UInt32),
    detector      LowCardinality(String),
    score         Float64,
    explanation   String CODEC(ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, ts, event_id)
TTL ts + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 10000;
