"""What the analytics store holds about one user, and erasing it (privacy requests).

The product's definition of a user's data, always within one tenant: every decision whose
``user_id`` is U, or whose limiter ``key`` is U or starts with ``U + ":"`` (U = "user:123"
owns the keys "user:123" and "user:123:search", not "user:1234").  In the raw table that is
those rows; in the rollups, which have no user_id column, it is the rows of those keys.

Erasing must also keep the rollups honest for everyone else: a decision of U under a key
that is not U's (a shared key such as "ip:10.0.0.1" checked with ``user_id`` = U) was
counted in that key's rollup rows, so before its raw row goes, a correction row that
subtracts it is added to each rollup.  The counters are SimpleAggregateFunction(sum, UInt64)
and UInt64 sums wrap modulo 2^64, so adding the two's complement of a count subtracts it
exactly (a query's ``sum()``, or a merge, sees the true total; an unmerged correction row on
its own reads as a huge number, which is why every rollup query must sum).  Latency
quantile states cannot be subtracted: the other keys' latency distributions keep U's
samples, which identify nobody.

The tenant rollups (migration 0007) are left alone: they have no key and no user id, only
a tenant's counts per route, reason and segment, so no row of theirs is U's.  They keep
counting U's decisions in the tenant's totals, anonymously.

Alerts (``ratewatch.alerts``) name the subject they blocked: U's are those of scope
``user_id`` with subject U, and those of scope ``key`` whose subject is one of U's keys.
They are deleted with the rest.

Incidents (``ratewatch.incidents``) found by the targeted-account detector
(``detectors/targets.py``) name the account their members pressed, in the evidence's
``target`` (``{"scope": "user_id" | "key", "value": ...}``) and in the ``reasons`` text: U's
are those whose target is U (scope ``user_id``) or one of U's keys (scope ``key``).  Every
row of such an incident's history names U, so those rows are deleted with the rest; the
other detectors' incidents (no target) are never a user's.

The audit log is not touched: it records who changed what (a block of U was created, U's
data was erased) and is kept as the operator's compliance record.

This module builds SQL from names and quoted literals only and imports no ClickHouse client
at import time, so the limiter can use ``summary_sql`` without loading one.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from analytics.clickhouse import describe
from analytics.errors import QueryError
from analytics.sqltext import quote
from analytics.tables import (
    ALERTS_TABLE,
    DATABASE,
    DECISIONS_TABLE,
    INCIDENTS_TABLE,
    ROLLUP_TABLES,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

MAX_FIELD_LENGTH = 512

# the views' bucket of each rollup (migrations 0002, 0004); a correction must land in the
# very rows the view wrote, so these must stay equal to the views' expressions
_BUCKETS = {
    "minute": "toStartOfMinute(ts)",
    "hour": "toStartOfHour(ts)",
    "day": "toStartOfDay(ts)",
}
_GROUP = "tenant, key, route, reason, segment"
_COUNTERS = (
    "requests",
    "allowed_requests",
    "denied_requests",
    "shadow_denied_requests",
    "total_cost",
)
# the views' counts (migration 0011): what the caller was answered, a shadow policy's
# would-be denial (limiter/policies/checks.py SHADOWED) as allowed and counted apart too
_SHADOW_DENIED = "NOT allowed AND shadow AND reason IN ('limit', 'cost_exceeds_limit')"
_COUNTS = (
    f"count(), countIf(allowed OR ({_SHADOW_DENIED})), "
    f"countIf(NOT allowed AND NOT ({_SHADOW_DENIED})), countIf({_SHADOW_DENIED}), sum(cost)"
)
_RETENTION = r"TTL ts \+ toIntervalDay\((\d+)\)"
# DELETEs return only once the rows are gone everywhere (every replica on a server), and a
# delete that falls back to a mutation waits for it too
_DELETE_SETTINGS = "SETTINGS lightweight_deletes_sync = 2, mutations_sync = 2"


def check_subject(tenant: object, user_id: object) -> tuple[str, str]:
    """``(tenant, user_id)`` if both are non-empty strings of at most MAX_FIELD_LENGTH
    characters that UTF-8 can carry; QueryError naming the bad one otherwise.  An empty
    user_id would match every decision made without one."""
    return _field("tenant", tenant), _field("user_id", user_id)


def _field(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise QueryError(f"{name} must be a non-empty string")
    if len(value) > MAX_FIELD_LENGTH:
        raise QueryError(f"{name} is longer than {MAX_FIELD_LENGTH} characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise QueryError(f"{name} is not valid Unicode (it holds a lone surrogate)") from None
    return value


def key_condition(user_id: str, column: str = "key") -> str:
    """The rows whose ``column`` is one of ``user_id``'s keys: U itself or one below it."""
    # startsWith, not LIKE: % and _ in a user id are plain characters
    return f"({column} = {quote(user_id)} OR startsWith({column}, {quote(user_id + ':')}))"


def decisions_condition(tenant: str, user_id: str) -> str:
    """The raw decisions that are ``user_id``'s data in ``tenant``."""
    return f"tenant = {quote(tenant)} AND ({key_condition(user_id)} OR user_id = {quote(user_id)})"


def rollup_condition(tenant: str, user_id: str) -> str:
    """The rollup rows that are ``user_id``'s data in ``tenant`` (rollups have no user_id)."""
    return f"tenant = {quote(tenant)} AND {key_condition(user_id)}"


def alerts_condition(tenant: str, user_id: str) -> str:
    """The alerts that are ``user_id``'s data in ``tenant``: of U, or of one of U's keys."""
    keys = key_condition(user_id, "subject")
    return (
        f"tenant = {quote(tenant)} AND ((scope = 'user_id' AND subject = {quote(user_id)})"
        f" OR (scope = 'key' AND {keys}))"
    )


def incidents_condition(tenant: str, user_id: str) -> str:
    """The incident rows that are ``user_id``'s data in ``tenant``: those whose evidence
    names U, or one of U's keys, as the account their members pressed."""
    scope = "JSONExtractString(evidence, 'target', 'scope')"
    value = "JSONExtractString(evidence, 'target', 'value')"
    return (
        f"tenant = {quote(tenant)} AND (({scope} = 'user_id' AND {value} = {quote(user_id)})"
        f" OR ({scope} = 'key' AND {key_condition(user_id, value)}))"
    )


# every table that holds a user's data, raw table first: what a summary counts and an erasure
# deletes, by the short names the API reports
_ERASED = (DECISIONS_TABLE, *ROLLUP_TABLES.values(), ALERTS_TABLE, INCIDENTS_TABLE)


def _conditions(tenant: str, user_id: str) -> dict[str, str]:
    """Table -> the condition selecting U's rows in it, the raw table first."""
    rollups = rollup_condition(tenant, user_id)
    own = {
        DECISIONS_TABLE: decisions_condition(tenant, user_id),
        ALERTS_TABLE: alerts_condition(tenant, user_id),
        INCIDENTS_TABLE: incidents_condition(tenant, user_id),
    }
    return {table: own.get(table, rollups) for table in _ERASED}


def summary_sql(tenant: str, user_id: str) -> str:
    """One read-only SELECT answering one row: ``total_keys``, ``total_requests``,
    ``decisions_rows``, ``decisions_per_{minute,hour,day}_rows``, ``alerts_rows``,
    ``incidents_rows`` and
    ``data_retention_days`` (the raw table's TTL; 0 if it has none)."""
    check_subject(tenant, user_id)
    rollups = "".join(
        f"    (SELECT count() FROM {table} WHERE {condition}) AS {_short(table)}_rows,\n"
        for table, condition in _conditions(tenant, user_id).items()
        if table != DECISIONS_TABLE
    )
    return f"""SELECT
    raw.total_keys AS total_keys,
    raw.total_requests AS total_requests,
    raw.total_requests AS decisions_rows,
{rollups}    (SELECT toUInt32OrZero(extract(engine_full, {quote(_RETENTION)}))
     FROM system.tables
     WHERE database = {quote(DATABASE)} AND name = {quote(_short(DECISIONS_TABLE))}
    ) AS data_retention_days
FROM (
    SELECT uniqExact(key) AS total_keys, count() AS total_requests
    FROM {DECISIONS_TABLE}
    WHERE {decisions_condition(tenant, user_id)}
) AS raw"""


def erase_user(client: Client, tenant: str, user_id: str) -> dict[str, int]:
    """Delete ``user_id``'s data in ``tenant`` from the raw table, every rollup, the alerts
    and the incidents, keeping the other keys' rollup totals equal to the raw rows that
    remain; return the rows removed per table (``decisions``, ``decisions_per_minute``, …,
    ``alerts``, ``incidents``).

    Idempotent: with no new decisions of U, a repeated call writes nothing and returns
    zeros.  QueryError if a statement fails; the client should then be discarded (chDB
    hands a failed statement's output to the next one on the same connection).

    Not atomic against writers: a decision of U stored while this runs may be deleted
    without its correction (a shared key's rollups then over-count it) or leave a rollup
    row of one of U's keys behind (a second call removes that); decisions stored after it
    returns are U's data again, for another call.
    """
    from clickhouse_connect.driver.exceptions import ClickHouseError

    check_subject(tenant, user_id)
    try:
        conditions = _conditions(tenant, user_id)
        removed = _count(client, conditions)
        _correct_rollups(client, tenant, user_id)
        for table, condition in conditions.items():
            if table != DECISIONS_TABLE and removed[_short(table)]:
                client.command(f"DELETE FROM {table} WHERE {condition} {_DELETE_SETTINGS}")
        # last: the corrections are computed from these rows, so a retry after a crash
        # anywhere above finds them again
        if removed[_short(DECISIONS_TABLE)]:
            client.command(
                f"DELETE FROM {DECISIONS_TABLE} WHERE {decisions_condition(tenant, user_id)}"
                f" {_DELETE_SETTINGS}"
            )
    except ClickHouseError as exc:
        raise QueryError(f"erasing a user's analytics data failed: {describe(exc)}") from exc
    return removed


def _count(client: Client, conditions: dict[str, str]) -> dict[str, int]:
    counts = [f"(SELECT count() FROM {table} WHERE {where})" for table, where in conditions.items()]
    row = client.query("SELECT " + ", ".join(counts)).result_rows[0]
    names = [_short(table) for table in conditions]
    return {name: int(value) for name, value in zip(names, row, strict=True)}


def _correct_rollups(client: Client, tenant: str, user_id: str) -> None:
    """Subtract U's decisions under keys that are not U's from those keys' rollup rows."""
    where = (
        f"tenant = {quote(tenant)} AND user_id = {quote(user_id)} AND NOT {key_condition(user_id)}"
    )
    # which decisions are being corrected: equal sets of rows give equal tokens below
    identity = client.query(
        f"SELECT count(), sum(cityHash64(event_id, ts, key)) FROM {DECISIONS_TABLE} WHERE {where}"
    ).result_rows[0]
    if not identity[0]:
        return
    for granularity, table in ROLLUP_TABLES.items():
        # through Python rather than INSERT ... SELECT: the engine deduplicates an INSERT
        # SELECT only when it deems the SELECT stable, which varies by version; a client
        # insert of the same rows with the same token is deduplicated everywhere.  Strings
        # as bytes, so a key that is not valid UTF-8 comes back into the very same row.
        groups = client.query(
            f"""SELECT toUnixTimestamp({_BUCKETS[granularity]}) AS bucket, {_GROUP},
                {_COUNTS}
            FROM {DECISIONS_TABLE} WHERE {where}
            GROUP BY bucket, {_GROUP}
            ORDER BY bucket, {_GROUP}""",
            query_formats={"String": "bytes"},
        ).result_rows
        corrections = [[*group[:6], *(_minus(int(n)) for n in group[6:])] for group in groups]
        # A crash after some corrections and before the raw rows are deleted leaves those
        # rows to be corrected again by the retry; the token, the identity of the rows,
        # makes the engine drop the insert into a table that has it already.  Residual
        # risk: rows of U written between the crash and the retry change the token, and
        # the engine remembers only the last non_replicated_deduplication_window inserts,
        # so such a retry subtracts the first rows twice.
        digest = hashlib.sha256(repr((tenant, user_id, identity, corrections)).encode())
        client.insert(
            table,
            corrections,
            column_names=["bucket", *_GROUP.split(", "), *_COUNTERS],
            settings={
                "insert_deduplicate": 1,
                "insert_deduplication_token": "erase-user/" + digest.hexdigest(),
                "async_insert": 0,  # async inserts are deduplicated by other rules
            },
        )


def _minus(count: int) -> int:
    # the two's complement: adding it to a UInt64 sum subtracts ``count`` modulo 2^64;
    # latency_quantiles is left out of the insert, so it gets an empty state
    return -count % 2**64


def _short(table: str) -> str:
    return table.rpartition(".")[2]


ERASED_TABLES: tuple[str, ...] = tuple(_short(table) for table in _ERASED)
