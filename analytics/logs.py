"""The tenant's logs as the API lists them, newest first: the audit log
(``ratewatch.audit_log``) and the alerts (``ratewatch.alerts``).

Like ``usage``, this module only writes SQL and shapes its rows: whoever runs it (the owner
of chDB over its socket, or a ClickHouse server) is the caller's business.  Every query
names the tenant, and every value in it is quoted here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from analytics.sqltext import quote
from analytics.tables import ALERTS_TABLE, AUDIT_TABLE

MAX_LISTED_ROWS = 1000
DEFAULT_LISTED_ROWS = 100
ALERT_FILTERS = ("kind", "scope", "subject", "mode", "detector")


@dataclass(frozen=True)
class LogQuery:
    """One listing of ``tenant``'s log: exact-match ``filters`` by column, ``since``
    (inclusive) and ``until`` in epoch milliseconds, at most ``limit`` rows."""

    tenant: str
    filters: Mapping[str, str] = field(default_factory=dict)
    since: int | None = None
    until: int | None = None
    limit: int = DEFAULT_LISTED_ROWS

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LISTED_ROWS:
            raise ValueError(f"limit {self.limit!r} is not within 1-{MAX_LISTED_ROWS}")

    def where(self, columns: tuple[str, ...]) -> str:
        unknown = sorted(set(self.filters) - set(columns))
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a filter of this log: {', '.join(columns)}")
        conditions = [f"tenant = {quote(self.tenant)}"]
        conditions += [f"{name} = {quote(value)}" for name, value in self.filters.items()]
        for moment, operator in ((self.since, ">="), (self.until, "<")):
            if moment is not None:
                conditions.append(f"ts {operator} fromUnixTimestamp64Milli({int(moment)}, 'UTC')")
        return " AND ".join(conditions)


def audit_sql(query: LogQuery) -> str:
    """The audit entries of ``query``; filterable by ``action``."""
    # the epoch-ms alias must not be called ts: an alias shadows the column in WHERE
    return f"""SELECT toUnixTimestamp64Milli(ts) AS epoch_ms, toString(event_id) AS id, actor,
                   action, target, details, source_ip
            FROM {AUDIT_TABLE} FINAL
            WHERE {query.where(("action",))}
            ORDER BY ts DESC, id
            LIMIT {query.limit}"""


def alerts_sql(query: LogQuery) -> str:
    """The alerts of ``query``; filterable by every column of ``ALERT_FILTERS``."""
    return f"""SELECT toUnixTimestamp64Milli(ts) AS epoch_ms, toString(event_id) AS id, kind,
                   scope, subject, nullIf(block_id, '') AS block_id, mode, ttl_seconds,
                   offence, detector, score, explanation
            FROM {ALERTS_TABLE} FINAL
            WHERE {query.where(ALERT_FILTERS)}
            ORDER BY ts DESC, id
            LIMIT {query.limit}"""


def listed(rows: list[dict[str, Any]], json_column: str) -> list[dict[str, Any]]:
    """Rows of a log read newest first, as the API lists them: ``epoch_ms`` as ``ts``, and
    ``json_column`` (stored as JSON text) as the object it holds."""
    for row in rows:
        row["ts"] = row.pop("epoch_ms")
        row[json_column] = _json_object(row[json_column])
    return rows


def _json_object(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text
