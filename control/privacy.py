"""Privacy requests across every store: what RateWatch holds about one user of a tenant
(Redis counters, blocks, detection records and the incidents naming the user; the raw
analytics table, every rollup, the alerts and the incidents' history), reported or erased.

Which data is a user's is defined in ``limiter/state/privacy.py``,
``analytics/erasure.py`` and, for incidents, ``detectors/incident_store.py``.  An erasure
removes the analytics rows first and Redis second: if the analytics store is down, nothing
is erased and the caller is told to retry (every step is idempotent).  In Redis an incident
naming the user is redacted rather than deleted: its addresses and counts name nobody's
account.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from analytics.erasure import ERASED_TABLES, check_subject, summary_sql
from analytics.errors import AnalyticsError, QueryError
from analytics.gateway import Analytics
from control.analytics_store import run_query
from detectors.incident_store import IncidentStore
from limiter.http.problems import Problem
from limiter.state.privacy import UserDataStore


@dataclass(frozen=True)
class Erasure:
    """What one erasure removed; ``analytics`` rows per table, None without that store;
    ``incidents`` the Redis incidents redacted (kept, no longer naming the user)."""

    counters: int
    blocks: int
    detection_records: int
    analytics: dict[str, int] | None
    incidents: int = 0

    @property
    def redis_keys(self) -> int:
        return self.counters + self.blocks + self.detection_records


class PrivacyRequests:
    def __init__(
        self, user_data: UserDataStore, incidents: IncidentStore, analytics: Analytics | None
    ):
        self._user_data = user_data
        self._incidents = incidents
        self._analytics = analytics

    async def erase(self, tenant: str, user_id: str) -> Erasure:
        """Erase ``user_id``'s data of ``tenant`` from every store; 422 for a user id the
        stores cannot name, 503 (nothing erased) if the analytics store failed."""
        _check_user_id(tenant, user_id)
        analytics: dict[str, int] | None = None
        if self._analytics is not None:
            try:
                analytics = await self._analytics.erase_user(tenant, user_id)
            except AnalyticsError as exc:
                raise Problem(
                    503,
                    "analytics-unavailable",
                    f"nothing was erased: the analytics store failed ({exc}); retry",
                ) from exc
        counters, blocks, records = await self._user_data.erase(tenant, user_id)
        incidents = await self._incidents.redact_user(tenant, user_id)
        return Erasure(counters, blocks, records, analytics, incidents)

    async def summary(self, tenant: str, user_id: str) -> dict[str, Any]:
        """The brief's summary of ``user_id``'s data, with the rows and keys per store."""
        _check_user_id(tenant, user_id)
        held = await self._user_data.find(tenant, user_id)
        incidents = await self._incidents.naming(tenant, user_id)
        stored: dict[str, Any] | None = None
        if self._analytics is not None:
            rows = await run_query(self._analytics, summary_sql(tenant, user_id))
            stored = rows[0] if rows else {}
        found = stored or {}
        return {
            "user_id": user_id,
            "total_keys": max(len(held.limiter_keys), int(found.get("total_keys") or 0)),
            "total_requests": int(found.get("total_requests") or 0),
            "active_windows": len(held.counters),
            "data_retention_days": found.get("data_retention_days"),
            "stores": {
                "redis": {
                    "counters": len(held.counters),
                    "blocks": len(held.blocks),
                    "detection_records": len(held.detection_records),
                    "incidents": len(incidents),
                },
                "clickhouse": None
                if stored is None
                else {table: int(stored.get(f"{table}_rows") or 0) for table in ERASED_TABLES},
            },
        }


def _check_user_id(tenant: str, user_id: str) -> None:
    try:
        check_subject(tenant, user_id)
    except QueryError as exc:
        raise Problem(422, "validation-error", f"user_id: {exc}") from None
