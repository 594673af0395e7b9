-- Tracing (limiter/tracing.py): a decision asked for by a traced request carries its W3C
-- trace id, 32 lowercase hex digits, so a trace in the tracing backend joins the decision
-- it produced (and a decision its trace).  Untraced decisions, and every row written
-- before this migration, have trace_id = '' (see 0001 on '' rather than Nullable).
--
-- A trace id is unique per request: a bloom filter lets a lookup by one trace id skip
-- almost every granule.  The index covers parts written from now on; older parts have no
-- trace ids to find.

ALTER TABLE ratewatch.decisions
    ADD COLUMN IF NOT EXISTS trace_id String DEFAULT '' AFTER segment;

ALTER TABLE ratewatch.decisions
    ADD INDEX IF NOT EXISTS trace_id_bloom trace_id TYPE bloom_filter(0.01) GRANULARITY 4;
