"""Erasing a user's analytics data on real chDB: the raw rows, the rollups, the corrections.

One chDB directory for the module (chDB hosts one engine per process; the module's client is
closed before the next module opens another directory); tests are isolated by tenant.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from analytics import erasure
from analytics.clickhouse import chdb_url, connect
from analytics.erasure import erase_user, summary_sql
from analytics.errors import QueryError
from analytics.incident_log import IncidentLogWriter
from analytics.migrate import migrate
from analytics.sqltext import check_read_only, quote
from analytics.tables import (
    ALERTS_TABLE,
    DECISIONS_TABLE,
    INCIDENTS_TABLE,
    ROLLUP_TABLES,
    TENANT_ROLLUP_TABLES,
)
from limiter.state.privacy import owns_key
from tests.support.personal_data import (
    INCIDENT_ROWS,
    SHARED,
    USER,
    incident_event,
    insert_decisions,
    seed,
)

pytestmark = pytest.mark.timeout(120)

TABLES = [
    "decisions",
    *(table.rpartition(".")[2] for table in ROLLUP_TABLES.values()),
    "alerts",
    "incidents",
]
HOSTILE = [
    "x' OR 1=1 --",
    "x\\' OR 1=1 --",
    "'); DROP TABLE ratewatch.decisions; --",
    "\\",
    "'",
    "%",
    "_",
    "user:%",
    "nul\0byte",
    "line\nbreak\r\t",
    "é€😀",
    "\\N",
]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return chdb_url(tmp_path_factory.mktemp("erasure") / "clickhouse")


@pytest.fixture(scope="module")
def clickhouse(url: str) -> Iterator[Client]:
    client = connect(url)
    migrate(client)
    yield client
    client.close()


def rows_of(client: Client, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in client.query(sql).result_rows]


def summary(client: Client, tenant: str, user_id: str) -> dict[str, Any]:
    result = client.query(check_read_only(summary_sql(tenant, user_id)))
    return dict(zip(result.column_names, result.result_rows[0], strict=True))


def rollup_totals(client: Client, tenant: str, table: str) -> list[tuple[Any, ...]]:
    """A rollup's totals per row key, groups that sum to nothing left out."""
    return rows_of(
        client,
        f"""SELECT bucket, key, route, reason, segment, sum(requests) AS r,
                sum(allowed_requests) AS a, sum(denied_requests) AS d, sum(total_cost) AS c
            FROM {table} WHERE tenant = {quote(tenant)}
            GROUP BY bucket, key, route, reason, segment
            HAVING r != 0 OR a != 0 OR d != 0 OR c != 0
            ORDER BY ALL""",
    )


def raw_totals(client: Client, tenant: str, bucket: str) -> list[tuple[Any, ...]]:
    """What a rollup's totals must be, computed from the raw table."""
    return rows_of(
        client,
        f"""SELECT toDateTime({bucket}, 'UTC') AS b, key, route, reason, segment, count(),
                countIf(allowed), countIf(NOT allowed), sum(cost)
            FROM {DECISIONS_TABLE} WHERE tenant = {quote(tenant)}
            GROUP BY b, key, route, reason, segment
            ORDER BY ALL""",
    )


def assert_rollups_match_raw(client: Client, tenant: str) -> None:
    buckets = {
        "minute": "toStartOfMinute(ts)",
        "hour": "toStartOfHour(ts)",
        "day": "toStartOfDay(ts)",
    }
    for granularity, table in ROLLUP_TABLES.items():
        assert rollup_totals(client, tenant, table) == raw_totals(
            client, tenant, buckets[granularity]
        ), granularity


def snapshot(client: Client, tenant: str) -> dict[str, Any]:
    """Everything a tenant has, for comparing before and after."""
    state: dict[str, Any] = {
        "raw": rows_of(
            client,
            f"SELECT event_id, key, user_id FROM {DECISIONS_TABLE}"
            f" WHERE tenant = {quote(tenant)} ORDER BY event_id",
        )
    }
    for table in ROLLUP_TABLES.values():
        state[table] = rollup_totals(client, tenant, table)
    state[ALERTS_TABLE] = rows_of(
        client,
        f"SELECT scope, subject FROM {ALERTS_TABLE} WHERE tenant = {quote(tenant)} ORDER BY ALL",
    )
    state[INCIDENTS_TABLE] = incident_targets(client, tenant)
    return state


def incident_targets(client: Client, tenant: str) -> list[tuple[Any, ...]]:
    """Each incident history row's id and target, read independently of the module."""
    return rows_of(
        client,
        f"SELECT incident_id, JSONExtractRaw(evidence, 'target') FROM {INCIDENTS_TABLE}"
        f" WHERE tenant = {quote(tenant)} ORDER BY ALL",
    )


def last_writes(client: Client) -> list[tuple[Any, ...]]:
    """The number of each table's newest insert and newest mutation (a DELETE is one);
    background merges change neither."""
    inserts = rows_of(
        client,
        "SELECT table, max(max_block_number) FROM system.parts"
        " WHERE database = 'ratewatch' AND active GROUP BY table ORDER BY table",
    )
    mutations = rows_of(
        client,
        r"SELECT table, max(toUInt64(extract(mutation_id, '\d+'))) FROM system.mutations"
        " WHERE database = 'ratewatch' GROUP BY table ORDER BY table",
    )
    return inserts + mutations


def matching(client: Client, tenant: str, user_id: str) -> dict[str, int]:
    """Rows of ``user_id`` per table, counted independently of the module under test."""
    counts = {
        "decisions": rows_of(
            client,
            f"SELECT count() FROM {DECISIONS_TABLE} WHERE tenant = {quote(tenant)}"
            f" AND (user_id = {quote(user_id)} OR key = {quote(user_id)}"
            f" OR substring(key, 1, {len(user_id.encode()) + 1}) = {quote(user_id + ':')})",
        )[0][0]
    }
    for table in ROLLUP_TABLES.values():
        counts[table.rpartition(".")[2]] = rows_of(
            client,
            f"SELECT count() FROM {table} WHERE tenant = {quote(tenant)}"
            f" AND (key = {quote(user_id)}"
            f" OR substring(key, 1, {len(user_id.encode()) + 1}) = {quote(user_id + ':')})",
        )[0][0]
    counts["alerts"] = rows_of(
        client,
        f"SELECT count() FROM {ALERTS_TABLE} WHERE tenant = {quote(tenant)}"
        f" AND ((scope = 'user_id' AND subject = {quote(user_id)}) OR (scope = 'key'"
        f" AND (subject = {quote(user_id)}"
        f" OR substring(subject, 1, {len(user_id.encode()) + 1}) = {quote(user_id + ':')})))",
    )[0][0]
    targets = [json.loads(raw) for _, raw in incident_targets(client, tenant) if raw]
    counts["incidents"] = sum(
        1
        for target in targets
        if target == {"scope": "user_id", "value": user_id}
        or (target["scope"] == "key" and owns_key(user_id, target["value"]))
    )
    return counts


def test_summary_counts_what_the_store_holds_about_a_user(clickhouse: Client, tenant: str) -> None:
    seed(clickhouse, tenant)
    before = matching(clickhouse, tenant, USER)
    assert before["decisions"] == 9  # 3 + 2 under USER's keys, 4 of USER's under the shared key
    assert summary(clickhouse, tenant, USER) == {
        "total_keys": 3,  # user:1, user:1:search, ip:10.0.0.1
        "total_requests": 9,
        "decisions_rows": 9,
        "decisions_per_minute_rows": before["decisions_per_minute"],
        "decisions_per_hour_rows": before["decisions_per_hour"],
        "decisions_per_day_rows": before["decisions_per_day"],
        "alerts_rows": 3,  # as user_id, by its key, by its search key
        "incidents_rows": INCIDENT_ROWS,  # the same three targets, one with two rows
        "data_retention_days": 30,
    }
    assert before["decisions_per_minute"] == 5  # a row per minute, route, reason, segment
    assert summary(clickhouse, tenant, "nobody")["total_requests"] == 0


def test_erasing_a_user_leaves_nothing_of_theirs_and_everyone_elses_totals(
    clickhouse: Client, tenant: str
) -> None:
    other = tenant + "-other"
    seed(clickhouse, tenant)
    seed(clickhouse, other)
    before = matching(clickhouse, tenant, USER)
    others = snapshot(clickhouse, other)

    removed = erase_user(clickhouse, tenant, USER)

    assert removed == before
    assert set(removed) == set(TABLES)
    # gone at once, from every table, without a merge or a FINAL
    assert matching(clickhouse, tenant, USER) == dict.fromkeys(TABLES, 0)
    assert summary(clickhouse, tenant, USER) == {
        "total_keys": 0,
        "total_requests": 0,
        "decisions_rows": 0,
        "decisions_per_minute_rows": 0,
        "decisions_per_hour_rows": 0,
        "decisions_per_day_rows": 0,
        "alerts_rows": 0,
        "incidents_rows": 0,
        "data_retention_days": 30,
    }
    # the shared key lost USER's decisions in the raw table and in every rollup alike
    assert_rollups_match_raw(clickhouse, tenant)
    shared = rows_of(
        clickhouse,
        f"SELECT sum(requests), sum(denied_requests), sum(total_cost)"
        f" FROM {ROLLUP_TABLES['day']} WHERE tenant = {quote(tenant)} AND key = {quote(SHARED)}",
    )
    assert shared == [(4, 1, 5)]
    latency = rows_of(
        clickhouse,
        f"SELECT length(quantilesMerge(0.5, 0.9, 0.99)(latency_quantiles))"
        f" FROM {ROLLUP_TABLES['minute']} WHERE tenant = {quote(tenant)}",
    )
    assert latency == [(3,)]
    # user:2 (but for its decision under USER's key), the look-alike keys and the other
    # tenant's copy of USER are all still there
    assert rows_of(
        clickhouse,
        f"SELECT key, count() FROM {DECISIONS_TABLE}"
        f" WHERE tenant = {quote(tenant)} AND user_id = 'user:2' GROUP BY key ORDER BY key",
    ) == [(SHARED, 2), ("user:2", 2)]
    remaining_keys = rows_of(
        clickhouse,
        f"SELECT DISTINCT key FROM {DECISIONS_TABLE} WHERE tenant = {quote(tenant)} ORDER BY key",
    )
    assert remaining_keys == [(SHARED,), ("user:1-x",), ("user:12",), ("user:2",), ("x:user:1",)]
    assert rows_of(
        clickhouse,
        f"SELECT scope, subject FROM {ALERTS_TABLE} WHERE tenant = {quote(tenant)} ORDER BY ALL",
    ) == [("ip", USER), ("key", SHARED), ("key", "user:1-x"), ("user_id", "user:12")]
    # the incidents of look-alikes, of others and of no account stay, whole
    assert incident_targets(clickhouse, tenant) == [
        ("inc-3", '{"scope":"user_id","value":"user:12"}'),
        ("inc-4", '{"scope":"key","value":"user:1-x"}'),
        ("inc-5", '{"scope":"user_id","value":"user:1:search"}'),
        ("inc-6", '{"scope":"key","value":"ip:10.0.0.1"}'),
        ("inc-7", ""),
    ]
    assert snapshot(clickhouse, other) == others
    assert summary(clickhouse, other, USER)["total_requests"] == 9


def test_the_tenant_rollups_hold_no_user_and_keep_counting_an_erased_one_anonymously(
    clickhouse: Client, tenant: str
) -> None:
    names = ", ".join(quote(table.rpartition(".")[2]) for table in TENANT_ROLLUP_TABLES.values())
    columns = rows_of(
        clickhouse,
        f"SELECT DISTINCT name FROM system.columns WHERE database = 'ratewatch'"
        f" AND table IN ({names}) ORDER BY name",
    )
    assert not {name for (name,) in columns} & {"key", "user_id", "ip", "user_agent"}
    seed(clickhouse, tenant)

    def totals() -> dict[str, list[tuple[Any, ...]]]:
        return {
            table: rows_of(
                clickhouse,
                f"""SELECT bucket, route, reason, segment, sum(requests), sum(allowed_requests),
                        sum(denied_requests), sum(total_cost),
                        quantilesMerge(0.5, 0.9, 0.99)(latency_quantiles)
                    FROM {table} WHERE tenant = {quote(tenant)}
                    GROUP BY bucket, route, reason, segment ORDER BY ALL""",
            )
            for table in TENANT_ROLLUP_TABLES.values()
        }

    before = totals()
    assert erase_user(clickhouse, tenant, USER)["decisions"] == 9

    assert totals() == before
    for granularity, table in TENANT_ROLLUP_TABLES.items():
        per_key, tenant_wide = rows_of(
            clickhouse,
            f"SELECT (SELECT sum(requests) FROM {ROLLUP_TABLES[granularity]}"
            f" WHERE tenant = {quote(tenant)}),"
            f" (SELECT sum(requests) FROM {table} WHERE tenant = {quote(tenant)})",
        )[0]
        assert (per_key, tenant_wide) == (18 - 9, 18), granularity


def test_a_repeated_erasure_removes_and_corrects_nothing(clickhouse: Client, tenant: str) -> None:
    seed(clickhouse, tenant)
    erase_user(clickhouse, tenant, USER)
    after_first = snapshot(clickhouse, tenant)
    writes = last_writes(clickhouse)

    assert erase_user(clickhouse, tenant, USER) == dict.fromkeys(TABLES, 0)
    assert last_writes(clickhouse) == writes
    assert snapshot(clickhouse, tenant) == after_first
    assert_rollups_match_raw(clickhouse, tenant)


def test_a_retry_after_a_crash_does_not_subtract_twice(clickhouse: Client, tenant: str) -> None:
    seed(clickhouse, tenant)
    # a crash after the corrections were written and before the raw rows were deleted
    erasure._correct_rollups(clickhouse, tenant, USER)
    erasure._correct_rollups(clickhouse, tenant, USER)

    erase_user(clickhouse, tenant, USER)

    assert matching(clickhouse, tenant, USER) == dict.fromkeys(TABLES, 0)
    assert_rollups_match_raw(clickhouse, tenant)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_user_ids_match_only_themselves(
    clickhouse: Client, tenant: str, hostile: str
) -> None:
    insert_decisions(
        clickhouse,
        tenant,
        [
            {"key": hostile, "user_id": hostile},
            {"key": hostile + ":sub"},
            {"key": SHARED, "user_id": hostile},
            {"key": SHARED, "user_id": "bystander"},
            {"key": "bystander", "user_id": "bystander"},
            {"key": "x"},
        ],
    )
    named = [
        {"scope": "user_id", "value": hostile},
        {"scope": "key", "value": hostile + ":sub"},
        {"scope": "user_id", "value": "bystander"},
        {"scope": "key", "value": "x"},
    ]
    IncidentLogWriter(clickhouse).write(
        [incident_event(tenant, f"inc-{n}", target) for n, target in enumerate(named)],
        f"hostile/{tenant}",
    )
    found = summary(clickhouse, tenant, hostile)
    assert (found["total_requests"], found["incidents_rows"]) == (3, 2)

    removed = erase_user(clickhouse, tenant, hostile)
    assert (removed["decisions"], removed["incidents"]) == (3, 2)
    assert [row[0] for row in incident_targets(clickhouse, tenant)] == ["inc-2", "inc-3"]

    assert rows_of(
        clickhouse,
        f"SELECT key, user_id FROM {DECISIONS_TABLE} WHERE tenant = {quote(tenant)} ORDER BY ALL",
    ) == [("bystander", "bystander"), (SHARED, "bystander"), ("x", "")]
    assert_rollups_match_raw(clickhouse, tenant)
    assert rows_of(clickhouse, f"EXISTS TABLE {DECISIONS_TABLE}") == [(1,)]


@pytest.mark.parametrize("value", [*HOSTILE, "", "a" * 10_000, "'" * 100 + "\\" * 99])
def test_quote_makes_a_literal_of_any_string(clickhouse: Client, value: str) -> None:
    assert rows_of(clickhouse, f"SELECT {quote(value)}") == [(value,)]


@pytest.mark.parametrize(
    ("tenant_", "user_id", "message"),
    [
        ("acme", "", "user_id must be a non-empty string"),
        ("", "user:1", "tenant must be a non-empty string"),
        ("acme", "u" * 513, "user_id is longer than 512 characters"),
        ("acme", "\ud800", "user_id is not valid Unicode"),
    ],
)
def test_subjects_that_could_match_too_much_are_refused(
    clickhouse: Client, tenant_: str, user_id: str, message: str
) -> None:
    with pytest.raises(QueryError, match=message):
        erase_user(clickhouse, tenant_, user_id)
    with pytest.raises(QueryError, match=message):
        summary_sql(tenant_, user_id)


def test_a_failed_erasure_is_one_error_line(clickhouse: Client, url: str, tenant: str) -> None:
    seed(clickhouse, tenant)
    client = connect(url)
    try:
        client.set_client_setting("readonly", 1)
        with pytest.raises(QueryError) as raised:
            erase_user(client, tenant, USER)
    finally:
        client.close()
    message = str(raised.value)
    assert message.startswith("erasing a user's analytics data failed: ")
    assert "READONLY" in message
    assert "\n" not in message
    assert matching(clickhouse, tenant, USER)["decisions"] == 9
