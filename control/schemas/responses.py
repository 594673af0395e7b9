"""Response bodies of the key, analytics, audit, alert and privacy routes, for the OpenAPI
document.

The routes build plain dicts (their rows come from ClickHouse as JSON); these structs only
describe them, and a test validates real responses against the published schema.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class KeyInfo(msgspec.Struct, kw_only=True):
    """An API key as listed: never the key itself, nor its signing secret."""

    id: str
    tenant: str
    admin: bool
    name: str
    hint: str  # the key's first and last characters
    created_at: float  # epoch seconds
    segment: str | None
    signed: bool  # its requests must be signed (docs/security.md, "Signed requests")


class KeyList(msgspec.Struct, kw_only=True):
    keys: list[KeyInfo]


class KeyCreated(KeyInfo, kw_only=True):
    """A new key: the key, and a signed key's signing secret, are shown here only."""

    key: str
    signing_secret: str | None = None


class UsageCounts(msgspec.Struct, kw_only=True):
    requests: int
    allowed: int
    denied: int
    shadow_denied: int  # among ``allowed``: what a shadow policy would have denied
    cost: int
    deny_rate: float


class LatencyQuantiles(msgspec.Struct, kw_only=True):
    """The limiter's answer time in microseconds; null without requests."""

    p50: float | None
    p90: float | None
    p99: float | None


class UsageTotals(UsageCounts, kw_only=True):
    latency_us: LatencyQuantiles


class UsagePoint(UsageCounts, kw_only=True):
    ts: str  # start of the step, ISO 8601 UTC


class UsageGroup(UsageCounts, kw_only=True):
    value: str  # the key, route or segment ('' = none given)


class UsageFilters(msgspec.Struct, kw_only=True):
    key: str | None
    route: str | None
    segment: str | None


class UsageResponse(msgspec.Struct, kw_only=True):
    """Usage of the caller's tenant over ``window``: totals, one point per step (empty
    steps included), and with ``group_by`` the top ``top`` groups by requests."""

    tenant: str
    window: Literal["1h", "24h", "7d", "30d"]
    from_: str = msgspec.field(name="from")
    to: str
    granularity: Literal["minute", "hour", "day"]
    filters: UsageFilters
    totals: UsageTotals
    series: list[UsagePoint]
    group_by: Literal["key", "route", "segment"] | None = None
    groups: list[UsageGroup] | None = None


class AuditEntry(msgspec.Struct, kw_only=True):
    ts: int  # epoch milliseconds
    id: str
    actor: str  # the acting API key's id, "cli", or "detector:<name>"
    action: str
    target: str
    details: dict[str, str | int | float | bool | None]
    source_ip: str


class AuditList(msgspec.Struct, kw_only=True):
    tenant: str
    entries: list[AuditEntry]


class AlertEntry(msgspec.Struct, kw_only=True):
    ts: int  # epoch milliseconds
    id: str
    # block.created | block.escalated | block.shadowed | block.skipped_cap, and for a
    # coordinated campaign incident.opened | incident.updated | incident.closed (scope
    # "incident", subject the incident's id, explanation the incident)
    kind: str
    scope: Literal["ip", "key", "user_id", "incident"]
    subject: str
    block_id: str | None  # None when no block was made (block.skipped_cap)
    mode: Literal["enforce", "shadow"]
    ttl_seconds: int | None
    offence: int | None  # the subject's repeat count, 1 for a first offence
    detector: str
    score: float
    # detector, detector_version, score, threshold, window_seconds, reasons, signals
    explanation: dict[str, Any]


class AlertList(msgspec.Struct, kw_only=True):
    tenant: str
    alerts: list[AlertEntry]


class RedisCounts(msgspec.Struct, kw_only=True):
    counters: int
    blocks: int
    detection_records: int  # the detectors' offence history and markers about the user
    # incidents whose target is the user or one of its keys; an erasure redacts them (keeps
    # them without the target), so under "deleted" this counts the incidents redacted
    incidents: int


class PrivacyDeleted(msgspec.Struct, kw_only=True):
    redis: RedisCounts
    clickhouse: dict[str, int] | None  # rows per table; null without an analytics store


class PrivacyDeleteResult(msgspec.Struct, kw_only=True):
    success: bool
    message: str
    deleted_keys: int  # Redis keys removed (counters, blocks, detection records)
    deleted: PrivacyDeleted


class PrivacyStores(msgspec.Struct, kw_only=True):
    redis: RedisCounts
    clickhouse: dict[str, int] | None


class PrivacySummaryResult(msgspec.Struct, kw_only=True):
    user_id: str
    total_keys: int
    total_requests: int
    active_windows: int
    data_retention_days: int | None
    stores: PrivacyStores
