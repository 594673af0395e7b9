"""Migrations, the decision writer and the rollups on real chDB.

chDB hosts one engine per process and one directory at a time, but a process may switch
directories once every client of the previous one is closed; so each test gets its own
directory and closes its clients.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

import analytics.migrate as migrate_module
from analytics.clickhouse import (
    DECISIONS_TABLE,
    MIGRATIONS_TABLE,
    ROLLUP_TABLES,
    chdb_url,
    connect,
)
from analytics.errors import AnalyticsError, ConfigError, InvalidEvents, MigrationError
from analytics.migrate import Migration, load_migrations, migrate
from analytics.writer import DecisionWriter, dedup_token
from tests.support.events import MINUTE, T0, decision

pytestmark = pytest.mark.timeout(120)

QS = (0.5, 0.9, 0.99)


def scalar(client: Client, sql: str) -> Any:
    return client.query(sql).result_rows[0][0]


# migrations


def test_migrate_applies_every_file_once_and_records_it(bare: Client) -> None:
    files = load_migrations()
    assert [m.file_name for m in files][:2] == ["0001_decisions.sql", "0002_rollups.sql"]

    assert migrate(bare) == [m.file_name for m in files]
    assert migrate(bare) == []
    assert migrate(bare) == []

    recorded = bare.query(
        f"SELECT version, name, checksum, applied_at FROM {MIGRATIONS_TABLE} ORDER BY version"
    ).result_rows
    assert [(v, n, c) for v, n, c, _ in recorded] == [
        (m.version, m.name, m.checksum) for m in files
    ]
    assert all(applied_at is not None for *_, applied_at in recorded)
    tables = {row[0] for row in bare.query("SHOW TABLES FROM ratewatch").result_rows}
    assert tables >= {t.split(".")[1] for t in [DECISIONS_TABLE, *ROLLUP_TABLES.values()]}


def test_a_migration_changed_after_it_was_applied_is_refused(
    bare: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(bare)
    original = load_migrations()
    edited = [
        Migration(m.version, m.name, m.template + "\n-- edited\n") if m.version == 1 else m
        for m in original
    ]
    monkeypatch.setattr(migrate_module, "load_migrations", lambda: edited)

    with pytest.raises(MigrationError, match=r"0001_decisions\.sql changed after it was applied"):
        migrate(bare)
    # nothing was recorded for the refused run
    assert scalar(bare, f"SELECT count() FROM {MIGRATIONS_TABLE}") == len(original)


def test_a_new_migration_file_is_applied_after_the_recorded_ones(
    bare: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(bare)
    extra = Migration(
        99, "extra", "CREATE TABLE IF NOT EXISTS ratewatch.extra (x UInt8) ENGINE = Memory;"
    )
    monkeypatch.setattr(migrate_module, "load_migrations", lambda: [*load_migrations(), extra])

    assert migrate(bare) == ["0099_extra.sql"]
    assert scalar(bare, "EXISTS TABLE ratewatch.extra") == 1
    assert migrate(bare) == []


def test_ttls_are_in_the_table_definitions_and_follow_the_retention(bare: Client) -> None:
    migrate(bare, retention_days=45)

    def ttl(table: str) -> str:
        statement = str(scalar(bare, f"SHOW CREATE TABLE {table}"))
        return next(line for line in statement.splitlines() if line.startswith("TTL"))

    assert ttl(DECISIONS_TABLE) == "TTL ts + toIntervalDay(45)"
    assert ttl(ROLLUP_TABLES["minute"]) == "TTL bucket + toIntervalDay(45)"
    assert ttl(ROLLUP_TABLES["hour"]) == "TTL bucket + toIntervalDay(90)"
    assert ttl(ROLLUP_TABLES["day"]) == "TTL bucket + toIntervalDay(730)"

    assert migrate(bare, retention_days=120) == []
    assert ttl(DECISIONS_TABLE) == "TTL ts + toIntervalDay(120)"
    assert ttl(ROLLUP_TABLES["hour"]) == "TTL bucket + toIntervalDay(120)"
    assert ttl(ROLLUP_TABLES["day"]) == "TTL bucket + toIntervalDay(730)"

    with pytest.raises(ConfigError, match="at least 1 day, not 0"):
        migrate(bare, retention_days=0)


def test_every_table_the_writer_feeds_deduplicates_inserts(clickhouse: Client) -> None:
    for table in [DECISIONS_TABLE, *ROLLUP_TABLES.values()]:
        statement = str(scalar(clickhouse, f"SHOW CREATE TABLE {table}"))
        assert "non_replicated_deduplication_window = 10000" in statement, table


# the writer


def test_the_writer_stores_every_field_exactly(clickhouse: Client) -> None:
    events = [
        decision(),
        decision(
            ts=T0 + 123_456,
            tenant="tenant-ünïcode",
            key="api:ключ:" + "x" * 400,
            algorithm="token_bucket",
            limit=10**12,
            window=366 * 24 * 3600,
            cost=10**12,
            allowed=False,
            remaining=0,
            reset_in=31_622_400,
            reason="limit",
            ip="2001:db8::1",
            route="/v1/search?q=a'b",
            user_agent='Mozilla/5.0 "quoted"\nnext line',
            user_id="u-42",
            latency_us=4_294_967_295,
            instance="limiter-7",
        ),
        decision(ts=T0 + 1, route=None, ip=None, user_agent=None, user_id=None, instance=""),
    ]
    assert DecisionWriter(clickhouse).write(events, "t/0/0-2") == 3

    rows = clickhouse.query(
        "SELECT v, toString(event_id), toUnixTimestamp64Milli(ts), tenant, key, algorithm,"
        " `limit`, `window`, cost, allowed, remaining, reset_in, reason, ip, route,"
        f" user_agent, user_id, latency_us, instance FROM {DECISIONS_TABLE}"
    ).result_rows
    stored = {row[1]: row for row in rows}
    assert len(stored) == 3
    for e in events:
        assert stored[e.event_id] == (
            e.v,
            e.event_id,
            e.ts,
            e.tenant,
            e.key,
            e.algorithm,
            e.limit,
            e.window,
            e.cost,
            e.allowed,
            e.remaining,
            e.reset_in,
            e.reason,
            e.ip or "",
            e.route or "",
            e.user_agent or "",
            e.user_id or "",
            e.latency_us,
            e.instance,
        )
    assert scalar(clickhouse, f"SELECT toTypeName(ts) FROM {DECISIONS_TABLE} LIMIT 1") == (
        "DateTime64(3, 'UTC')"
    )


def test_events_no_column_can_hold_are_named_and_nothing_is_written(
    clickhouse: Client,
) -> None:
    events = [
        decision(),
        decision(event_id="not-a-uuid"),
        decision(),
        decision(latency_us=-1),
        decision(window=2**32),
        decision(cost=2**70),
    ]
    with pytest.raises(InvalidEvents) as raised:
        DecisionWriter(clickhouse).write(events, "t/0/0-5")
    assert raised.value.indices == [1, 3, 4, 5]
    assert scalar(clickhouse, f"SELECT count() FROM {DECISIONS_TABLE}") == 0

    assert DecisionWriter(clickhouse).write([], "t/0/6-5") == 0


def test_dedup_token_names_the_partition_and_offset_range() -> None:
    assert dedup_token("ratewatch.decisions.v1", 3, 100, 199) == "ratewatch.decisions.v1/3/100-199"
    assert dedup_token("decisions", "0", "1767225600000-0", "1767225600000-9") == (
        "decisions/0/1767225600000-0-1767225600000-9"
    )


def totals(client: Client) -> dict[str, tuple[int, ...]]:
    """Rows, requests, allowed, denied and cost of the raw table and of every rollup."""
    found = {
        "raw": tuple(
            int(x)
            for x in clickhouse_row(
                client,
                f"SELECT count(), count(), countIf(allowed), countIf(NOT allowed), sum(cost)"
                f" FROM {DECISIONS_TABLE}",
            )
        )
    }
    for name, table in ROLLUP_TABLES.items():
        found[name] = tuple(
            int(x)
            for x in clickhouse_row(
                client,
                "SELECT sum(requests), sum(requests), sum(allowed_requests),"
                f" sum(denied_requests), sum(total_cost) FROM {table}",
            )
        )
    return found


def clickhouse_row(client: Client, sql: str) -> tuple[Any, ...]:
    return tuple(client.query(sql).result_rows[0])


def test_a_replayed_batch_is_counted_once_in_the_raw_table_and_every_rollup(
    clickhouse: Client,
) -> None:
    # the batch spans midnight, so it is two blocks in every table
    batch = [
        decision(
            ts=T0 - 100 + i * 50, allowed=i % 3 != 0, cost=i, reason="ok" if i % 3 else "limit"
        )
        for i in range(8)
    ]
    other = [decision(ts=T0 + 5 * MINUTE, key="user:2", cost=7)]
    writer = DecisionWriter(clickhouse)

    writer.write(batch, dedup_token("decisions", 0, 0, 7))
    once = totals(clickhouse)
    assert once["raw"] == (8, 8, 5, 3, 28)
    assert all(once[name] == once["raw"] for name in ROLLUP_TABLES)

    writer.write(other, dedup_token("decisions", 0, 8, 8))
    # the replay comes after another batch: still within the deduplication window
    assert writer.write(batch, dedup_token("decisions", 0, 0, 7)) == len(batch)
    writer.write(other, dedup_token("decisions", 0, 8, 8))
    replayed = totals(clickhouse)
    assert replayed["raw"] == (9, 9, 6, 3, 35)
    assert all(replayed[name] == replayed["raw"] for name in ROLLUP_TABLES)

    # the same events under another token are another batch
    writer.write(batch, dedup_token("decisions", 1, 0, 7))
    doubled = totals(clickhouse)
    assert doubled["raw"] == (17, 17, 11, 6, 63)
    assert all(doubled[name] == doubled["raw"] for name in ROLLUP_TABLES)


def linear_quantile(values: list[int], q: float) -> float:
    """ClickHouse's quantiles() on a sample it holds whole: linear interpolation."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def test_rollups_count_and_merge_quantiles_on_a_known_dataset(clickhouse: Client) -> None:
    # minute 0: nine fast allowed requests; minute 1: one slow denied one; minute 61 (the
    # next hour): latencies 1..100.  Averaging the per-minute medians would give 505 for
    # the first hour; the true median is 10.
    first = [decision(ts=T0 + i, latency_us=10, cost=2) for i in range(9)]
    first.append(decision(ts=T0 + MINUTE, latency_us=1000, allowed=False, reason="limit", cost=5))
    later = [
        decision(ts=T0 + 61 * MINUTE + i, latency_us=i + 1, key="user:2", route="/v1/search")
        for i in range(100)
    ]
    writer = DecisionWriter(clickhouse)
    writer.write(first, "t/0/0-9")
    writer.write(later[:40], "t/0/10-49")  # states of one bucket from two inserts
    writer.write(later[40:], "t/0/50-109")

    minute = clickhouse.query(
        "SELECT toUnixTimestamp(bucket) * 1000, key, route, reason, sum(requests),"
        " sum(allowed_requests), sum(denied_requests), sum(total_cost)"
        f" FROM {ROLLUP_TABLES['minute']} GROUP BY ALL ORDER BY 1, 2, 4"
    ).result_rows
    assert minute == [
        (T0, "user:1", "/v1/orders", "ok", 9, 9, 0, 18),
        (T0 + MINUTE, "user:1", "/v1/orders", "limit", 1, 0, 1, 5),
        (T0 + 61 * MINUTE, "user:2", "/v1/search", "ok", 100, 100, 0, 100),
    ]

    hours = clickhouse.query(
        "SELECT toUnixTimestamp(bucket) * 1000, sum(requests), sum(denied_requests),"
        " sum(total_cost), quantilesMerge(0.5, 0.9, 0.99)(latency_quantiles)"
        f" FROM {ROLLUP_TABLES['hour']} GROUP BY bucket ORDER BY bucket"
    ).result_rows
    first_latencies = [e.latency_us for e in first]
    later_latencies = [e.latency_us for e in later]
    assert [row[:4] for row in hours] == [(T0, 10, 1, 23), (T0 + 60 * MINUTE, 100, 0, 100)]
    assert hours[0][4] == pytest.approx([linear_quantile(first_latencies, q) for q in QS])
    assert hours[0][4][0] == 10
    assert hours[1][4] == pytest.approx([50.5, 90.1, 99.01])

    day = clickhouse_row(
        clickhouse,
        "SELECT sum(requests), sum(allowed_requests), sum(denied_requests), sum(total_cost),"
        " quantilesMerge(0.5, 0.9, 0.99)(latency_quantiles)"
        f" FROM {ROLLUP_TABLES['day']} WHERE tenant = 'acme'",
    )
    everything = first_latencies + later_latencies
    assert day[:4] == (110, 109, 1, 123)
    assert day[4] == pytest.approx([linear_quantile(everything, q) for q in QS])
    raw = clickhouse_row(
        clickhouse, f"SELECT quantiles(0.5, 0.9, 0.99)(latency_us) FROM {DECISIONS_TABLE}"
    )
    assert day[4] == pytest.approx(raw[0])


def test_connect_errors_name_the_url(bare: Client, tmp_path: Path) -> None:
    # chDB hosts one directory per process at a time; `bare` holds this test's directory
    with pytest.raises(AnalyticsError, match="this process has chDB open on another directory"):
        connect(chdb_url(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match=r"'chdb://relative/dir' must be chdb:///absolute"):
        connect("chdb://relative/dir")
    with pytest.raises(ConfigError, match=r"'postgres://u:\*\*\*@db:5432' must start with"):
        connect("postgres://u:hunter2@db:5432")
