-- The audit log: one row per security-relevant change (stream/audit.py, AuditEvent), for
-- auditors' queries and GET /v1/audit.
--
-- Rows arrive through the audit outbox (a Redis stream) and its drain (stream/audit_drain.py),
-- which acknowledges an entry only after this table took it: at least once.  A batch retried
-- after a failed insert repeats its insert_deduplication_token (hence
-- non_replicated_deduplication_window, as for the other tables) and is dropped; an entry
-- delivered again in another batch (a drain killed before it acknowledged, a claim from a
-- dead consumer) is a second row with the same sorting key, which ReplacingMergeTree folds
-- into one.  Until a merge has folded them, readers that must not see a repeat say FINAL:
-- the table is small (changes, not requests), so FINAL costs little.
--
-- ORDER BY (tenant, ts, event_id): every query is one tenant's time range, and event_id
-- makes the key unique per event.  details is the event's details as JSON text (counts, a
-- reason, a mode, a TTL; never deleted personal data): auditors read it whole, and
-- JSONExtract* reaches into it when a query needs one value.  tenant and action have few
-- distinct values; actor, target and source_ip are plain strings (source_ip may be '').
--
-- No TTL: how long an audit trail is kept is the operator's compliance decision (often
-- years), not a storage default; monthly partitions make removing old months a cheap
-- ALTER TABLE ratewatch.audit_log DROP PARTITION 'YYYYMM'.

CREATE TABLE IF NOT EXISTS ratewatch.audit_log
(
    ts          DateTime64(3, 'UTC'),
    event_id    UUID,
    v           UInt16,
    tenant      LowCardinality(String),
    actor       String,
    action      LowCardinality(String),
    target      String,
    details     String CODEC(ZSTD(1)),
    source_ip   String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, ts, event_id)
SETTINGS non_replicated_deduplication_window = 10000;
