"""Shadow denials in the rollups (migration 0011) on real chDB: every rollup counts what the
caller was answered, a shadow policy's would-be denial as allowed and apart in
``shadow_denied_requests``; the migration corrects the rows the old views wrote, once however
often it runs; an erasure's corrections follow the same rule.

Each test has a chDB directory of its own and closes its clients (``bare`` and
``clickhouse`` of conftest.py).
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

import analytics.migrate as migrate_module
from analytics.clickhouse import MIGRATIONS_TABLE
from analytics.erasure import erase_user
from analytics.migrate import load_migrations, migrate, render, retention_params
from analytics.sqltext import split_statements
from analytics.tables import ROLLUP_TABLES, TENANT_ROLLUP_TABLES
from stream.events import DecisionEvent
from tests.support.chdb_directory import rows, write_in_batches
from tests.support.events import HOUR, T0, decision

pytestmark = pytest.mark.timeout(120)

SHADOW_ROLLUPS = 11  # the migration's version
ROLLUPS = (*ROLLUP_TABLES.values(), *TENANT_ROLLUP_TABLES.values())
GROUP = "bucket, tenant, route, reason, segment"
# the limiter's rule (limiter/policies/checks.py SHADOWED): what shadow mode answers allowed
SHADOWED = ("limit", "cost_exceeds_limit")


def counters(client: Client, table: str) -> list[tuple[Any, ...]]:
    """A rollup's counters and merged latency per bucket, tenant, route, reason and segment
    (a per-key rollup summed over its keys)."""
    return rows(
        client,
        f"""SELECT {GROUP}, sum(requests), sum(allowed_requests), sum(denied_requests),
                sum(shadow_denied_requests), sum(total_cost),
                quantilesMerge(0.5, 0.9, 0.99)(latency_quantiles)
            FROM {table} GROUP BY {GROUP} ORDER BY {GROUP}""",
    )


def answered(events: list[DecisionEvent], granularity: str) -> list[tuple[Any, ...]]:
    """What every rollup of ``granularity`` must count, computed here from the events: the
    answer given, shadow denials apart.  Latency is left to the rollups' own comparison."""
    size = {"minute": 60_000, "hour": HOUR, "day": 24 * HOUR}[granularity]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for e in events:
        group = (e.ts // size * size // 1000, e.tenant, e.route or "", e.reason, e.segment or "")
        shadow_denied = e.shadow and not e.allowed and e.reason in SHADOWED
        counts = groups.setdefault(group, [0, 0, 0, 0, 0])
        counts[0] += 1
        counts[1] += e.allowed or shadow_denied
        counts[2] += not e.allowed and not shadow_denied
        counts[3] += shadow_denied
        counts[4] += e.cost
    return [(*group, *counts) for group, counts in sorted(groups.items())]


def assert_every_rollup_counts(client: Client, events: list[DecisionEvent]) -> None:
    for granularity in ROLLUP_TABLES:
        expected = answered(events, granularity)
        for table in (ROLLUP_TABLES[granularity], TENANT_ROLLUP_TABLES[granularity]):
            found = [
                (int(row[0].timestamp()), *row[1:5], *(int(n) for n in row[5:10]))
                for row in counters(client, table)
            ]
            assert found == expected, table


def traffic(seed: int, count: int, start_ms: int, span_ms: int) -> list[DecisionEvent]:
    """Decisions of two tenants, some by a shadow policy: its would-be denials, and a blocked
    subject that shadow mode does not answer allowed."""
    rng = random.Random(seed)
    events = []
    for _ in range(count):
        shadow = rng.random() < 0.4
        allowed = rng.random() < 0.6
        reason = "ok" if allowed else rng.choice(("limit", "blocked", "cost_exceeds_limit"))
        events.append(
            decision(
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                ts=start_ms + rng.randrange(span_ms),
                tenant=rng.choice(("acme", "globex")),
                key=f"user:{rng.randrange(40)}",
                user_id=rng.choice((None, "user:7")),
                route=rng.choice(("/v1/search", "/v1/orders")),
                allowed=allowed,
                reason=reason,
                segment=rng.choice(("free", None)),
                policy="trial" if shadow else rng.choice(("", "paid")),
                shadow=shadow,
                cost=rng.randrange(1, 4),
                latency_us=rng.randrange(50, 5000),
            )
        )
    return events


def write(client: Client, events: list[DecisionEvent], name: str) -> None:
    write_in_batches(client, events, name, batch=300)


def test_the_rollups_count_a_shadow_denial_as_the_allowed_answer_it_was(
    clickhouse: Client,
) -> None:
    events = [
        decision(shadow=True, policy="trial", allowed=False, reason="limit", cost=2),
        decision(shadow=True, policy="trial", allowed=False, reason="cost_exceeds_limit"),
        decision(shadow=True, policy="trial", allowed=False, reason="blocked"),
        decision(shadow=True, policy="trial"),
        decision(policy="paid", allowed=False, reason="limit"),
    ]
    write(clickhouse, events, "shadow")
    for table in ROLLUPS:
        totals = rows(
            clickhouse,
            f"""SELECT sum(requests), sum(allowed_requests), sum(denied_requests),
                    sum(shadow_denied_requests), sum(total_cost) FROM {table}""",
        )
        assert totals == [(5, 3, 2, 2, 6)], table
    assert_every_rollup_counts(clickhouse, events)
    # the would-be denials keep their reason: by reason, they are where the policy put them
    by_reason = rows(
        clickhouse,
        f"""SELECT reason, sum(shadow_denied_requests) FROM {TENANT_ROLLUP_TABLES["day"]}
            GROUP BY reason HAVING sum(shadow_denied_requests) > 0 ORDER BY reason""",
    )
    assert by_reason == [("cost_exceeds_limit", 1), ("limit", 1)]


def untouched(client: Client) -> dict[str, list[tuple[Any, ...]]]:
    """What the migration must not change in any rollup: requests, cost and latency per
    group (the counters it corrects are compared with ``answered``)."""
    return {
        table: rows(
            client,
            f"""SELECT {GROUP}, sum(requests), sum(total_cost),
                    quantilesMerge(0.5, 0.9, 0.99)(latency_quantiles)
                FROM {table} GROUP BY {GROUP} ORDER BY {GROUP}""",
        )
        for table in ROLLUPS
    }


def with_history(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[DecisionEvent], dict[str, list[tuple[Any, ...]]]]:
    """``client`` migrated up to 0011, holding decisions the old views counted."""
    everything = load_migrations()
    monkeypatch.setattr(
        migrate_module,
        "load_migrations",
        lambda: [m for m in everything if m.version < SHADOW_ROLLUPS],
    )
    migrate(client)
    history = traffic(1, 2000, T0, 2 * HOUR)
    write(client, history, "history")
    # the old views counted a would-be denial as denied
    old = rows(client, f"SELECT sum(denied_requests) FROM {ROLLUP_TABLES['hour']}")
    assert old == [(sum(not e.allowed for e in history),)]
    # the migrations up to this one: later ones are not what these tests look at
    monkeypatch.setattr(
        migrate_module,
        "load_migrations",
        lambda: [m for m in everything if m.version <= SHADOW_ROLLUPS],
    )
    return history, untouched(client)


def forget_the_migration(client: Client) -> None:
    client.command(f"DELETE FROM {MIGRATIONS_TABLE} WHERE version = {SHADOW_ROLLUPS}")


def test_the_migration_corrects_the_history_once_however_often_it_runs(
    bare: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    history, before = with_history(bare, monkeypatch)
    assert migrate(bare) == ["0011_shadow_rollups.sql"]
    assert_every_rollup_counts(bare, history)
    assert untouched(bare) == before
    expected = {table: counters(bare, table) for table in ROLLUPS}

    # a run that failed after its corrections, before it was recorded, runs again in full
    forget_the_migration(bare)
    assert migrate(bare) == ["0011_shadow_rollups.sql"]
    assert {table: counters(bare, table) for table in ROLLUPS} == expected

    # from now on the views count what comes, once
    later = traffic(2, 500, T0 + 3 * HOUR, HOUR)
    write(bare, later, "later")
    assert_every_rollup_counts(bare, [*history, *later])


def test_a_run_cut_short_corrects_the_rest_and_nothing_twice(
    bare: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    history, before = with_history(bare, monkeypatch)
    migration = next(m for m in load_migrations() if m.version == SHADOW_ROLLUPS)
    statements = split_statements(render(migration.template, retention_params(30)))
    # cut short after the first rollup's correction (its INSERT), the others not reached
    first_insert = next(i for i, sql in enumerate(statements) if sql.startswith("INSERT"))
    for sql in statements[: first_insert + 1]:
        bare.command(sql)
    assert migrate(bare) == ["0011_shadow_rollups.sql"]
    assert_every_rollup_counts(bare, history)
    assert untouched(bare) == before


def test_an_erasure_corrects_shared_keys_as_the_views_count(clickhouse: Client) -> None:
    events = traffic(3, 1500, T0, HOUR)
    write(clickhouse, events, "traffic")
    erase_user(clickhouse, "acme", "user:7")
    kept = [
        e
        for e in events
        if not (
            e.tenant == "acme"
            and (e.user_id == "user:7" or e.key == "user:7" or e.key.startswith("user:7:"))
        )
    ]
    # the erasure removed some decisions, among them some under others' keys
    assert len(kept) < len(events)
    assert any(e.user_id == "user:7" and e.key != "user:7" for e in events if e not in kept)
    for granularity, table in ROLLUP_TABLES.items():
        # a group whose every decision was erased sums to zeros (its latency state stays)
        found = [
            (int(row[0].timestamp()), *row[1:5], *(int(n) for n in row[5:10]))
            for row in counters(clickhouse, table)
            if any(row[5:10])
        ]
        assert found == answered(kept, granularity), table
