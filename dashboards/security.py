"""The Security dashboard: what the abuse detection did for one tenant (alerts by kind and
detector, top offenders, the latest alerts with their reasons), the blocks made and in
force (manual ones too, from the audit log), and the decisions the blocks denied.  For the
security team; alerts and audit entries are read with FINAL (at-least-once delivery)."""

from __future__ import annotations

from dashboards.model import Dashboard, Override
from dashboards.panels import stat, table, timeseries
from dashboards.sql import (
    ALERTS,
    AUDIT_LOG,
    FILL_TIME,
    MINUTES_IN_RANGE,
    TENANT,
    TENANT_PER_MINUTE,
    TIME_BUCKET,
)

_ALERTS_IN_RANGE = f"FROM {ALERTS} FINAL\nWHERE {TENANT}\n  AND $__timeFilter(ts)"
_FIRST_REASON = "JSONExtractString(explanation, 'reasons', 1)"
# A block is in force at the end of the range if it was created before it (in the audit
# log: detectors' and operators' blocks alike), its TTL reaches past it and no block.removed
# entry came before it.  No block lasts longer than 366 days (limiter.state.blocks).
_ACTIVE_BLOCKS = (
    f"FROM {AUDIT_LOG} FINAL\n"
    f"WHERE {TENANT}\n"
    "  AND action = 'block.created'\n"
    "  AND ts <= $__toTime\n"
    "  AND ts > $__toTime - INTERVAL 366 DAY\n"
    "  AND ts + toIntervalSecond(JSONExtractUInt(details, 'ttl')) > $__toTime\n"
    "  AND target NOT IN (\n"
    f"      SELECT target FROM {AUDIT_LOG} FINAL\n"
    f"      WHERE {TENANT} AND action = 'block.removed' AND ts <= $__toTime\n"
    "  )"
)

ALERT_COUNT = stat(
    "Alerts",
    "Actions of the abuse detection in the range: blocks made, escalated, shadowed, or"
    " refused by the cap.",
    f"SELECT count() AS alerts\n{_ALERTS_IN_RANGE}",
    thresholds=((None, "green"), (1, "orange")),
)
BLOCKS_CREATED = stat(
    "Blocks created",
    "Blocks made in the range, by the detectors and by operators (audit log).",
    f"SELECT count() AS blocks_created\nFROM {AUDIT_LOG} FINAL\n"
    f"WHERE {TENANT}\n  AND action = 'block.created'\n  AND $__timeFilter(ts)",
    thresholds=((None, "green"), (1, "orange")),
)
BLOCKS_ACTIVE = stat(
    "Blocks active",
    "Blocks in force at the end of the range (created, not expired, not removed), shadow"
    " ones included.",
    f"SELECT count() AS blocks_active\n{_ACTIVE_BLOCKS}",
    thresholds=((None, "green"), (1, "red")),
)
BLOCKED_DECISIONS = stat(
    "Blocked decisions",
    "Decisions denied in the range because a block matched (reason 'blocked').",
    f"SELECT sumIf(requests, reason = 'blocked') AS blocked\nFROM {TENANT_PER_MINUTE}\n"
    f"WHERE {TENANT}\n  AND {MINUTES_IN_RANGE}",
    thresholds=((None, "red"),),
)
SUBJECTS = stat(
    "Subjects alerted",
    "Distinct IPs, keys and user ids the detectors acted on in the range.",
    f"SELECT uniqExact(scope, subject) AS subjects\n{_ALERTS_IN_RANGE}",
)
REFUSED_BY_CAP = stat(
    "Refused by the cap",
    "Blocks the tenant's max_dynamic_blocks cap refused: more than none means the cap is"
    " too low for the attacks seen.",
    f"SELECT countIf(kind = 'block.skipped_cap') AS refused\n{_ALERTS_IN_RANGE}",
    thresholds=((None, "green"), (1, "red")),
)

ALERTS_BY_KIND = timeseries(
    "Alerts by kind",
    "block.created (first offence), block.escalated (repeat offence, longer block),"
    " block.shadowed (shadow mode: recorded, not enforced), block.skipped_cap.",
    "SELECT\n    $__timeInterval(ts) AS time,\n    kind,\n    count() AS alerts\n"
    f"{_ALERTS_IN_RANGE}\nGROUP BY time, kind\nORDER BY time, kind",
    min_interval="1m",
    bars=True,
    stacked=True,
    series_by="kind",
)
ALERTS_BY_DETECTOR = timeseries(
    "Alerts by detector",
    "Which layer set the score: rules, baseline, isolation_forest or both models.",
    "SELECT\n    $__timeInterval(ts) AS time,\n    detector,\n    count() AS alerts\n"
    f"{_ALERTS_IN_RANGE}\nGROUP BY time, detector\nORDER BY time, detector",
    min_interval="1m",
    bars=True,
    stacked=True,
    series_by="detector",
)
BLOCKED_SERIES = timeseries(
    "Blocked decisions over time",
    "Decisions denied by a block, per interval (per-minute rollup, reason 'blocked').",
    f"SELECT\n    {TIME_BUCKET},\n    sumIf(requests, reason = 'blocked') AS blocked\n"
    f"FROM {TENANT_PER_MINUTE}\nWHERE {TENANT}\n  AND {MINUTES_IN_RANGE}\n"
    f"GROUP BY time\n{FILL_TIME}",
    min_interval="1m",
    overrides=(Override("blocked", color="red"),),
)
TOP_OFFENDERS = table(
    "Top offenders",
    "The subjects acted on in the range, most repeated offence first, with the latest"
    " detector and reason.",
    "SELECT\n    scope AS `Scope`,\n    subject AS `Subject`,\n"
    "    max(offence) AS `Offence`,\n    count() AS `Alerts`,\n"
    "    max(score) AS `Max score`,\n    argMax(detector, ts) AS `Latest detector`,\n"
    f"    argMax({_FIRST_REASON}, ts) AS `Latest reason`,\n    max(ts) AS `Last alert`\n"
    f"{_ALERTS_IN_RANGE}\nGROUP BY scope, subject\n"
    "ORDER BY `Offence` DESC, `Alerts` DESC, `Max score` DESC, subject\nLIMIT 20",
    overrides=(Override("Max score", decimals=2),),
)
ACTIVE_BLOCKS = table(
    "Blocks in force",
    "Blocks in force at the end of the range, with who made them and why.",
    "SELECT\n    JSONExtractString(details, 'scope') AS `Scope`,\n"
    "    JSONExtractString(details, 'value') AS `Subject`,\n"
    "    JSONExtractString(details, 'source') AS `Source`,\n"
    "    JSONExtractString(details, 'mode') AS `Mode`,\n"
    "    JSONExtractString(details, 'reason') AS `Reason`,\n"
    "    ts AS `Created`,\n"
    "    ts + toIntervalSecond(JSONExtractUInt(details, 'ttl')) AS `Expires`,\n"
    "    target AS `Block`\n"
    f"{_ACTIVE_BLOCKS}\nORDER BY `Expires` DESC, `Block`\nLIMIT 100",
    width=24,
    height=8,
)
RECENT_ALERTS = table(
    "Recent alerts",
    "The latest alerts with the detector's score, the score a block needs and the"
    " headline reason from the explanation.",
    "SELECT\n    ts AS `Time`,\n    kind AS `Kind`,\n    scope AS `Scope`,\n"
    "    subject AS `Subject`,\n    mode AS `Mode`,\n    detector AS `Detector`,\n"
    "    score AS `Score`,\n    JSONExtractFloat(explanation, 'threshold') AS `Threshold`,\n"
    f"    {_FIRST_REASON} AS `Reason`,\n    ttl_seconds AS `TTL`,\n"
    "    offence AS `Offence`,\n    block_id AS `Block`\n"
    f"{_ALERTS_IN_RANGE}\nORDER BY ts DESC, event_id\nLIMIT 100",
    overrides=(
        Override("Score", decimals=2),
        Override("Threshold", decimals=2),
        Override("TTL", unit="s"),
    ),
    width=24,
    height=12,
)

SECURITY = Dashboard(
    uid="ratewatch-security",
    title="RateWatch / Security",
    description="Abuse detection for one tenant: alerts, offenders, blocks and blocked traffic.",
    panels=(
        ALERT_COUNT,
        BLOCKS_CREATED,
        BLOCKS_ACTIVE,
        BLOCKED_DECISIONS,
        SUBJECTS,
        REFUSED_BY_CAP,
        ALERTS_BY_KIND,
        ALERTS_BY_DETECTOR,
        BLOCKED_SERIES,
        TOP_OFFENDERS,
        ACTIVE_BLOCKS,
        RECENT_ALERTS,
    ),
    time_from="now-24h",
    refresh="1m",
)
