"""Latency of the usage API's queries on the rollups, against the same answers computed
from the raw table (the baseline), and of a privacy erasure, on chDB.

Usage::

    /work/venv/bin/python bench/usage_queries.py [--events 2000000] [--repeat 5]

Writes ``--events`` synthetic decisions (``--tenants`` tenants, ``--keys`` keys each,
8 routes, 4 segments, spread over the last ``--hours``) through ``DecisionWriter`` into a fresh
chDB directory, so the views fill the rollups as in production.  Then, for one tenant and
each window, times the three queries of ``GET /v1/analytics/usage`` (totals, series, top
routes) as the API builds them (``analytics.usage.UsageQuery``), and the same answers
computed from ``ratewatch.decisions`` (the baseline the rollups exist to beat), and checks
that both agree.  Last it times ``erase_user`` for one user (its rows in the raw table and
every rollup).  Prints medians in milliseconds and the ratios.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from analytics.clickhouse import chdb_url, connect  # noqa: E402
from analytics.erasure import erase_user  # noqa: E402
from analytics.migrate import migrate  # noqa: E402
from analytics.usage import WINDOWS, UsageQuery  # noqa: E402
from analytics.writer import DecisionWriter  # noqa: E402
from stream.events import DecisionEvent  # noqa: E402

TENANT = "tenant-0"
ROUTES = tuple(f"/api/v1/{name}" for name in ("search", "orders", "items", "cart", "login",
                                              "users", "pay", "feed"))  # fmt: skip
SEGMENTS = ("free", "pro", "enterprise", "")


def events(
    rng: random.Random, count: int, now_ms: int, keys: int, hours: int, tenants: int
) -> list[DecisionEvent]:
    span_ms = hours * 3_600_000
    return [
        DecisionEvent(
            event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            ts=now_ms - rng.randrange(span_ms),
            tenant=f"tenant-{rng.randrange(tenants)}",
            key=f"user:{rng.randrange(keys)}",
            algorithm="sliding_window",
            limit=100,
            window=60,
            cost=1,
            allowed=(allowed := rng.random() < 0.9),
            remaining=rng.randrange(100) if allowed else 0,
            reset_in=30,
            reason="ok" if allowed else "limit",
            route=rng.choice(ROUTES),
            user_id=f"user:{rng.randrange(keys)}",
            latency_us=rng.randrange(100, 900),
            segment=rng.choice(SEGMENTS) or None,
        )
        for _ in range(count)
    ]


def timed(run: object, repeat: int) -> tuple[float, object]:
    samples, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()  # type: ignore[operator]
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keys", type=int, default=200, help="distinct keys per tenant")
    parser.add_argument("--hours", type=int, default=24, help="how far back events go")
    parser.add_argument("--tenants", type=int, default=20, help="the events' tenants")
    args = parser.parse_args()
    rng = random.Random(7)
    now = int(time.time())
    with tempfile.TemporaryDirectory() as directory:
        client = connect(chdb_url(Path(directory)))
        migrate(client)
        writer = DecisionWriter(client)
        started = time.perf_counter()
        for batch in range(0, args.events, 100_000):
            size = min(100_000, args.events - batch)
            batch_events = events(rng, size, now * 1000, args.keys, args.hours, args.tenants)
            writer.write(batch_events, f"bench/{batch}")
        print(f"wrote {args.events:,} decisions in {time.perf_counter() - started:.1f}s")

        def rows(sql: str) -> list[dict[str, object]]:
            result = client.query(sql)
            return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

        print(f"{'window':>6} {'rollup ms':>10} {'raw ms':>8} {'ratio':>6}  (totals, series, top)")
        for window in WINDOWS:
            query = UsageQuery(TENANT, window, now, group_by="route", top=5)
            spec = query.spec

            def from_rollups(query: UsageQuery = query) -> tuple[object, object]:
                totals = rows(query.totals_sql())[0]["requests"]
                rows(query.series_sql())
                groups_sql = query.groups_sql()
                assert groups_sql is not None
                return totals, [(g["value"], g["requests"]) for g in rows(groups_sql)]

            start = f"toDateTime({query.start}, 'UTC')"
            bucket = "toStartOfMinute(ts)" if spec.table == "minute" else "toStartOfHour(ts)"
            where = f"tenant = '{TENANT}' AND {bucket} >= {start} AND ts <= toDateTime({now})"

            def from_raw(where: str = where, step: str = spec.step) -> tuple[object, object]:
                totals = rows(f"SELECT count() AS n FROM ratewatch.decisions WHERE {where}")
                rows(
                    f"SELECT toStartOfInterval(ts, INTERVAL 1 {step}) AS t, count() "
                    f"FROM ratewatch.decisions WHERE {where} GROUP BY t ORDER BY t"
                )
                top = rows(
                    f"SELECT route AS value, count() AS requests FROM ratewatch.decisions "
                    f"WHERE {where} GROUP BY value ORDER BY requests DESC, value LIMIT 5"
                )
                return totals[0]["n"], [(g["value"], g["requests"]) for g in top]

            rollup_ms, rollup_answer = timed(from_rollups, args.repeat)
            raw_ms, raw_answer = timed(from_raw, args.repeat)
            same = "" if rollup_answer == raw_answer else "  MISMATCH"
            ratio = raw_ms / rollup_ms
            print(f"{window:>6} {rollup_ms:>10.1f} {raw_ms:>8.1f} {ratio:>5.1f}x{same}")

        started = time.perf_counter()
        removed = erase_user(client, TENANT, "user:42")
        print(
            f"erase_user: {(time.perf_counter() - started) * 1000:.0f} ms, removed "
            + ", ".join(f"{table} {count}" for table, count in removed.items())
        )
        client.close()


if __name__ == "__main__":
    main()
