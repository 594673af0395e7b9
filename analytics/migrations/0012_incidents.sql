-- Incidents: one row per change of an incident (the blocks of one coordinated campaign,
-- grouped; stream/incidents.py, IncidentEvent), each row the incident as it was after the
-- change, for analysts' SQL over incident history (ratewatch sql) and dashboards.
-- kind is incident.opened, incident.updated (members joined) or incident.closed.
--
-- Rows arrive like the alerts' (migration 0006): through the incident outbox (a Redis
-- stream) and its drain (stream/outbox_drain.py), at least once, with a repeated batch
-- dropped by its insert_deduplication_token and a repeated event folded by
-- ReplacingMergeTree on the same sorting key; readers that must not see a repeat say FINAL.
-- The sorting key starts with (tenant, incident_id): one incident's history is one range.
--
-- The members are the incident's addresses as stored (at most 1000; counts['members']
-- counts them all), with each one's outcome and block id in the parallel arrays
-- member_outcomes and member_blocks ('' when no block was made); joined holds the
-- addresses this change added.  evidence (what the members share: route template,
-- behaviour, user agents, pace, onset spread) is kept whole as JSON text.
--
-- 90 days' TTL, as the alerts': an incident names addresses; the durable record of every
-- block is its audit entry.

CREATE TABLE IF NOT EXISTS ratewatch.incidents
(
    ts                DateTime64(3, 'UTC'),
    event_id          UUID,
    v                 UInt16,
    tenant            LowCardinality(String),
    kind              LowCardinality(String),
    incident_id       String,
    family            LowCardinality(String),
    state             LowCardinality(String),
    mode              LowCardinality(String),
    detector          LowCardinality(String),
    detector_version  LowCardinality(String),
    opened_at         DateTime64(3, 'UTC'),
    first_seen        DateTime64(3, 'UTC'),
    last_seen         DateTime64(3, 'UTC'),
    closed_at         Nullable(DateTime64(3, 'UTC')),
    members_count     UInt32,
    counts            Map(LowCardinality(String), UInt32),
    members           Array(String),
    member_outcomes   Array(LowCardinality(String)),
    member_blocks     Array(String),
    joined            Array(String),
    reasons           Array(String),
    evidence          String CODEC(ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, incident_id, ts, event_id)
TTL ts + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 10000;
