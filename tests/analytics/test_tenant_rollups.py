"""The tenant rollups (migration 0007) on real chDB: built like the per-key rollups less the
key, fed once per batch however often it is replayed, backfilled once from the per-key
history however often the migration runs, and giving the usage API the same answers as the
per-key rollups.

Each test has a chDB directory of its own and closes its clients (``bare`` and
``clickhouse`` of conftest.py).
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

import analytics.migrate as migrate_module
from analytics.clickhouse import MIGRATIONS_TABLE, chdb_url, connect
from analytics.erasure import erase_user
from analytics.errors import AnalyticsError
from analytics.migrate import load_migrations, migrate
from analytics.tables import ROLLUP_TABLES, TENANT_ROLLUP_TABLES
from analytics.usage import WINDOWS, UsageQuery
from analytics.writer import DecisionWriter, dedup_token
from stream.events import DecisionEvent
from tests.support.chdb_directory import rows, write_in_batches
from tests.support.events import MINUTE, T0, decision

pytestmark = pytest.mark.timeout(120)

TENANT_ROLLUPS = 7  # the migration's version
DECISION_COLUMNS = (9, 10)  # trace_id; policy and shadow
INCIDENTS = 12  # a table of its own, which this version's erasure reads
NOW = int(time.time())
GROUP = "bucket, tenant, route, reason, segment"


def sums(client: Client, table: str) -> list[tuple[Any, ...]]:
    """A rollup's counters and merged latency quantiles per bucket, tenant, route, reason and
    segment: for a per-key rollup summed over its keys."""
    return rows(
        client,
        f"""SELECT {GROUP}, sum(requests), sum(allowed_requests), sum(denied_requests),
                sum(total_cost), quantilesMerge(0.5, 0.9, 0.99)(latency_quantiles)
            FROM {table} GROUP BY {GROUP} ORDER BY {GROUP}""",
    )


def assert_tenant_rollups_sum_the_per_key_ones(client: Client) -> None:
    for granularity, table in TENANT_ROLLUP_TABLES.items():
        expected = sums(client, ROLLUP_TABLES[granularity])
        assert expected, granularity
        assert sums(client, table) == expected, granularity


def traffic(seed: int, count: int, start_ms: int, span_ms: int) -> list[DecisionEvent]:
    """Decisions of two tenants over many keys, routes, reasons and segments; fewer than
    8192 per tenant, so merged quantile states hold every sample and compare exactly."""
    rng = random.Random(seed)
    events = []
    for _ in range(count):
        allowed = rng.random() < 0.8
        events.append(
            decision(
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                ts=start_ms + rng.randrange(span_ms),
                tenant=rng.choice(("acme", "globex")),
                key=f"user:{rng.randrange(300)}",
                route=rng.choice(("/v1/search", "/v1/orders", "/v1/login", "")),
                allowed=allowed,
                reason="ok" if allowed else rng.choice(("limit", "blocked")),
                segment=rng.choice(("free", "pro", None)),
                cost=rng.randrange(1, 5),
                latency_us=rng.randrange(50, 5000),
            )
        )
    return events


def write(client: Client, events: list[DecisionEvent], name: str) -> None:
    write_in_batches(client, events, name, batch=500)


def test_each_tenant_rollup_and_view_is_its_per_key_one_less_the_key(clickhouse: Client) -> None:
    def create(name: str) -> str:
        return str(rows(clickhouse, f"SHOW CREATE TABLE {name}")[0][0])

    for granularity, per_key in ROLLUP_TABLES.items():
        tenant = TENANT_ROLLUP_TABLES[granularity]
        # same columns but key, engine, partitions, TTL and settings; per-key's PRIMARY KEY
        # is what 0004 left when it appended segment to the sorting key
        expected = "\n".join(
            line
            for line in create(per_key).replace(per_key, tenant).splitlines()
            if line not in ("    `key` String,",) and not line.startswith("PRIMARY KEY")
        ).replace("bucket, key, route", "bucket, route")
        assert create(tenant) == expected, granularity
        # the view: the per-key view's SELECT and GROUP BY less key
        view = create(f"{per_key}_mv").replace(per_key, tenant)
        expected_view = view.replace("    `key` String,\n", "").replace("    key,\n", "")
        assert create(f"{tenant}_mv") == expected_view, granularity


def test_the_tenant_rollups_ttls_follow_the_retention(bare: Client) -> None:
    def ttl(table: str) -> str:
        statement = str(rows(bare, f"SHOW CREATE TABLE {table}")[0][0])
        return next(line for line in statement.splitlines() if line.startswith("TTL"))

    migrate(bare, retention_days=45)
    days = {g: ttl(t) for g, t in TENANT_ROLLUP_TABLES.items()}
    assert days == {
        "minute": "TTL bucket + toIntervalDay(45)",
        "hour": "TTL bucket + toIntervalDay(90)",
        "day": "TTL bucket + toIntervalDay(730)",
    }
    migrate(bare, retention_days=120)
    assert ttl(TENANT_ROLLUP_TABLES["hour"]) == "TTL bucket + toIntervalDay(120)"
    assert {g: ttl(t) for g, t in TENANT_ROLLUP_TABLES.items()} == {
        g: ttl(t) for g, t in ROLLUP_TABLES.items()
    }


def test_a_replayed_batch_is_counted_once_in_the_tenant_rollups(clickhouse: Client) -> None:
    # across midnight and over three keys: several blocks per insert, several rows per bucket
    batch = [
        decision(ts=T0 - 100 + i * 50, key=f"user:{i % 3}", allowed=i % 3 != 0, cost=i)
        for i in range(8)
    ]
    other = [decision(ts=T0 + 5 * MINUTE, key="user:9", cost=7)]
    writer = DecisionWriter(clickhouse)

    def requests() -> dict[str, tuple[Any, ...]]:
        """Requests and cost in each tenant rollup."""
        return {
            granularity: rows(clickhouse, f"SELECT sum(requests), sum(total_cost) FROM {table}")[0]
            for granularity, table in TENANT_ROLLUP_TABLES.items()
        }

    writer.write(batch, dedup_token("decisions", 0, 0, 7))
    assert set(requests().values()) == {(8, 28)}

    writer.write(other, dedup_token("decisions", 0, 8, 8))
    assert writer.write(batch, dedup_token("decisions", 0, 0, 7)) == len(batch)
    writer.write(other, dedup_token("decisions", 0, 8, 8))
    assert set(requests().values()) == {(9, 35)}
    assert_tenant_rollups_sum_the_per_key_ones(clickhouse)

    # the same events under another token are another batch
    writer.write(batch, dedup_token("decisions", 1, 0, 7))
    assert set(requests().values()) == {(17, 63)}


def test_an_insert_cut_short_is_completed_in_the_tenant_rollups_by_the_same_insert(
    bare: Client, tmp_path: Path
) -> None:
    # a view that fails stands for a process killed during the insert (migration 0003):
    # the raw part is committed, some of the views' parts are not
    migrate(bare)
    bare.command("CREATE TABLE ratewatch.broken (x UInt8) ENGINE = Memory")
    bare.command(
        "CREATE MATERIALIZED VIEW ratewatch.broken_mv TO ratewatch.broken"
        " AS SELECT throwIf(latency_us >= 0, 'killed') AS x FROM ratewatch.decisions"
    )
    batch = traffic(5, 300, T0, 3_600_000)
    with pytest.raises(AnalyticsError, match="killed"):
        DecisionWriter(bare).write(batch, "cut/0-299")
    # a failed statement can leave its output to the next one on a chDB connection
    client = connect(chdb_url(tmp_path / "clickhouse"))
    try:
        client.command("DROP VIEW ratewatch.broken_mv")
        writer = DecisionWriter(client)
        writer.write(batch, "cut/0-299")
        writer.write(batch, "cut/0-299")
        assert rows(client, "SELECT count() FROM ratewatch.decisions") == [(300,)]
        assert_tenant_rollups_sum_the_per_key_ones(client)
        for table in TENANT_ROLLUP_TABLES.values():
            assert rows(client, f"SELECT sum(requests) FROM {table}") == [(300,)], table
    finally:
        client.close()


def test_the_migration_backfills_the_history_once_however_often_it_runs(
    bare: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = load_migrations()
    # the columns later migrations add to the decisions are written by this version's writer
    before = [
        m
        for m in everything
        if m.version < TENANT_ROLLUPS or m.version in (*DECISION_COLUMNS, INCIDENTS)
    ]
    monkeypatch.setattr(migrate_module, "load_migrations", lambda: before)
    migrate(bare)
    # a day of history in the per-key rollups, some of it erased (correction rows included)
    history = traffic(1, 3000, T0, 86_400_000)
    history += [decision(key="ip:10.0.0.1", user_id="user:5"), decision(key="user:5")]
    write(bare, history, "history")
    # this version's erasure also corrects the column 0011 adds to the per-key rollups
    for table in ROLLUP_TABLES.values():
        bare.command(
            f"ALTER TABLE {table} ADD COLUMN shadow_denied_requests "
            "SimpleAggregateFunction(sum, UInt64) AFTER denied_requests"
        )
    erase_user(bare, "acme", "user:5")

    through = [m for m in everything if m.version <= TENANT_ROLLUPS]
    monkeypatch.setattr(migrate_module, "load_migrations", lambda: through)
    assert migrate(bare) == ["0007_tenant_rollups.sql"]
    assert_tenant_rollups_sum_the_per_key_ones(bare)
    copied = {table: sums(bare, table) for table in TENANT_ROLLUP_TABLES.values()}

    def forget_the_migration() -> None:
        bare.command(f"DELETE FROM {MIGRATIONS_TABLE} WHERE version = {TENANT_ROLLUPS}")

    # a run that failed after its views were made, before it was recorded, runs again
    forget_the_migration()
    assert migrate(bare) == ["0007_tenant_rollups.sql"]
    assert {table: sums(bare, table) for table in copied} == copied

    # a run cut short in the middle of a copy: part of it written, no view yet
    minute = TENANT_ROLLUP_TABLES["minute"]
    bare.command(f"DROP VIEW {minute}_mv")
    bare.command(
        f"INSERT INTO {minute} SELECT * FROM {minute} LIMIT 100 SETTINGS insert_deduplicate = 0"
    )
    forget_the_migration()
    assert migrate(bare) == ["0007_tenant_rollups.sql"]
    assert {table: sums(bare, table) for table in copied} == copied

    # from now on the views count what comes, once
    write(bare, traffic(2, 600, T0 + 3_600_000, 3_600_000), "later")
    assert_tenant_rollups_sum_the_per_key_ones(bare)


@pytest.fixture
def recent(clickhouse: Client) -> Client:
    """Traffic over the last 30 days, denser in the last hour, for every usage window."""
    month_ms = 30 * 86_400_000
    write(clickhouse, traffic(3, 2000, NOW * 1000 - month_ms + 3_600_000, month_ms), "month")
    write(clickhouse, traffic(4, 1000, NOW * 1000 - 3_000_000, 3_000_000), "hour")
    return clickhouse


QUERIES = [
    pytest.param(dict(fields), id=f"{window}-{name}")
    for window in WINDOWS
    for name, fields in {
        "totals": {},
        "by-route": {"group_by": "route"},
        "by-segment": {"group_by": "segment", "route": "/v1/search"},
        "one-route": {"route": "/v1/orders", "segment": "pro"},
    }.items()
    for fields in [{**fields, "window": window}]
]


@pytest.mark.parametrize("fields", QUERIES)
def test_usage_queries_without_a_key_read_the_tenant_rollup_and_answer_the_same(
    recent: Client, fields: dict[str, Any]
) -> None:
    query = UsageQuery(tenant="acme", now=NOW, top=3, **fields)
    tenant_table = TENANT_ROLLUP_TABLES[query.spec.table]
    per_key_table = ROLLUP_TABLES[query.spec.table]
    assert query.table == tenant_table
    for sql in (query.totals_sql(), query.series_sql(), query.groups_sql()):
        if sql is None:
            continue
        assert tenant_table in sql
        assert rows(recent, sql) == rows(recent, sql.replace(tenant_table, per_key_table))
    assert rows(recent, query.totals_sql())[0][0] > 0  # the window holds seeded decisions


@pytest.mark.parametrize("window", WINDOWS)
def test_usage_queries_about_a_key_read_the_per_key_rollup(window: str) -> None:
    for query in (
        UsageQuery("acme", window, NOW, key="user:1"),
        UsageQuery("acme", window, NOW, group_by="key"),
        UsageQuery("acme", window, NOW, key="user:1", group_by="route"),
    ):
        assert query.table == ROLLUP_TABLES[query.spec.table]
        for sql in (query.totals_sql(), query.series_sql(), query.groups_sql()):
            assert sql is None or "tenant_decisions" not in sql
