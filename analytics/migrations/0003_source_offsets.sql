-- Where every row came from, the ledger of stored source offsets, and the consumers' plans.
--
-- The insert_deduplication_token of 0001/0002 drops only a repeat of the same batch, and
-- only per table and partition: a second insert with the token adds nothing, whatever rows
-- it holds.  Two things follow for a consumer (stream/kafka_consumer.py,
-- analytics/event_store.py):
--
-- 1. An insert is not atomic across the raw table and its views: a process killed during
--    one leaves the raw part without some rollup parts (every time, in our tests), and only
--    the same insert again, same token and same rows, completes the views.  So before it
--    writes a batch a consumer records its cut (first and last offset) in
--    ratewatch.consumer_batches, and after a crash it cuts its first batches the same way.
--
-- 2. A batch replayed with another cut (after a rebalance, or without a plan) must not
--    count its rows twice.  So each row carries its source (topic or stream), partition and
--    offset, and ratewatch.consumed lists the offsets whose rows are stored.  The consumer
--    writes it after the insert into ratewatch.decisions returned, that is after every view
--    committed: an offset in the ledger is in the raw table and in every rollup.  (A
--    materialized view would commit it before some of the rollups.)  Rows written without
--    a source (the columns' defaults, as in tools and tests) are not in the ledger.
--
-- Both tables are small and sorted for the consumer's lookups (one partition's offset
-- range).  ReplacingMergeTree folds a repeated row; lookups never need FINAL.  Ledger rows
-- keep the latest ts of their offset's events and live as long as those rows do in
-- ratewatch.decisions.  non_replicated_deduplication_window makes a retried insert of
-- either table a no-op, as for the others.
-- {retention_days} is filled in by `ratewatch migrate --retention-days` (default 30).

ALTER TABLE ratewatch.decisions
    ADD COLUMN IF NOT EXISTS source LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS source_partition UInt32 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS source_offset UInt64 DEFAULT 0;

CREATE TABLE IF NOT EXISTS ratewatch.consumed
(
    source              LowCardinality(String),
    source_partition    UInt32,
    source_offset       UInt64 CODEC(Delta, ZSTD(1)),
    ts                  DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (source, source_partition, source_offset)
TTL ts + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS ratewatch.consumer_batches
(
    source              LowCardinality(String),
    source_partition    UInt32,
    first_offset        UInt64,
    last_offset         UInt64,
    planned_at          DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (source, source_partition, first_offset)
TTL toDateTime(planned_at) + INTERVAL {retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;
