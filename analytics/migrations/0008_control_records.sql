-- The durable copy of the control plane's records (control/durable/): API keys (by their
-- keyed BLAKE3 hash, never the key), tenants' settings, webhooks (signing secrets sealed,
-- control/durable/sealing.py), allowlist entries and manual blocks.  Redis holds them for
-- the check path; this table is what they are restored from when Redis loses its data.
--
-- One row per version of a record, named by (kind, tenant, id): ReplacingMergeTree keeps
-- the highest version, and readers say FINAL.  A deletion (a revoked key, a lifted block) is
-- a row with deleted = 1, kept so that a restore never brings the record back.  No TTL:
-- these rows are the configuration itself, and there are few of them.

CREATE TABLE IF NOT EXISTS ratewatch.control_records
(
    kind      LowCardinality(String),
    tenant    String,
    id        String,
    version   UInt64,
    deleted   UInt8,
    payload   String CODEC(ZSTD(1))
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (kind, tenant, id);
