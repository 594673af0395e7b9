"""Throughput of the consumer's write path on chDB: decode → shape (polars) → Arrow insert.

Usage::

    /work/venv/bin/python bench/consumer_insert.py [--batches 20] [--batch-size 10000] [--skewed]

Builds synthetic decision events (1,000 keys over 20 tenants, a few routes and reasons;
keys uniform, the rollups' worst case, or with --skewed a few heavy keys), encodes each
batch as the JSON messages a consumer receives, and for every batch times decoding them
(``stream.events.decode``) and writing them (``DecisionWriter.write``: polars shaping, then
one Arrow insert into the raw table and so the three rollup views) into a fresh chDB
directory with the migrations applied.  Then every batch is written again with its token,
as a replay would (timing the polars shaping alone on the way), and the raw and rollup
counts are checked to hold every event exactly once.  The issue's target is the whole
consumer path at 50,000 events/s or more on this 2-core box; this measures the part that
runs in-process (the broker fetch and offset commit are not in it), and also reports CPU
time, which other load on a shared box distorts less than wall-clock time.
Prints a table; exit status 1 only if a count is wrong after the replay.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clickhouse_connect.driver.client import Client  # noqa: E402

from analytics.clickhouse import DECISIONS_TABLE, ROLLUP_TABLES, chdb_url, connect  # noqa: E402
from analytics.migrate import migrate  # noqa: E402
from analytics.writer import DecisionWriter, dedup_token, shape  # noqa: E402
from stream.events import DecisionEvent, decode, encode  # noqa: E402

TARGET = 50_000
REASONS = ("ok", "ok", "ok", "ok", "limit", "blocked", "fail_open")


def synthetic_batch(
    rng: random.Random, size: int, start_ms: int, skewed: bool = False
) -> list[bytes]:
    messages = []
    for i in range(size):
        reason = rng.choice(REASONS)
        event = DecisionEvent(
            event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            ts=start_ms + i * 7,
            tenant=f"tenant-{rng.randrange(20)}",
            key=f"user:{_key_number(rng, skewed)}",
            algorithm=rng.choice(("sliding_window", "token_bucket", "fixed_window")),
            limit=100,
            window=60,
            cost=1,
            allowed=reason in ("ok", "fail_open"),
            remaining=rng.randrange(100),
            reset_in=rng.randrange(60),
            reason=reason,
            ip=f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
            route=rng.choice(("/v1/orders", "/v1/search", "/login", None)),
            user_agent=rng.choice(("curl/8.5", "Mozilla/5.0 (X11; Linux x86_64)", None)),
            user_id=f"u{rng.randrange(5000)}" if rng.random() < 0.7 else None,
            latency_us=int(rng.lognormvariate(5, 0.6)),
            instance="limiter-1",
        )
        messages.append(encode(event))
    return messages


def _key_number(rng: random.Random, skewed: bool) -> int:
    # uniform: every decision of a minute is its own rollup row (the rollups' worst case);
    # skewed: a few keys make most requests, as rate-limited traffic does
    return min(int(rng.paretovariate(1.2)), 999) if skewed else rng.randrange(1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument(
        "--skewed", action="store_true", help="Pareto-distributed keys instead of uniform"
    )
    args = parser.parse_args()

    rng = random.Random(7)
    # a day ago: well inside the 30-day TTL (older rows would vanish as they are written)
    start_ms = int(time.time() * 1000) - 86_400_000
    batches = [
        synthetic_batch(rng, args.batch_size, start_ms + b * args.batch_size * 7, args.skewed)
        for b in range(args.batches)
    ]
    total = args.batches * args.batch_size
    timings = {"decode": 0.0, "write": 0.0, "shape": 0.0, "replay": 0.0}

    with tempfile.TemporaryDirectory(prefix="ratewatch-bench-") as tmp:
        client = connect(chdb_url(Path(tmp) / "clickhouse"))
        try:
            migrate(client)
            writer = DecisionWriter(client)
            tokens = []
            cpu_start = os.times()
            for number, messages in enumerate(batches):
                t0 = time.perf_counter()
                events = [decode(m) for m in messages]
                t1 = time.perf_counter()
                token = dedup_token(
                    "ratewatch.decisions.v1", 0, number * 10**6, number * 10**6 + len(events) - 1
                )
                writer.write(events, token)
                timings["decode"] += t1 - t0
                timings["write"] += time.perf_counter() - t1
                tokens.append(token)
                del events  # a consumer holds one batch at a time (keeps the GC's work real)
            cpu_end = os.times()
            counts = _counts(client)
            for messages, token in zip(batches, tokens, strict=True):
                events = [decode(m) for m in messages]
                t0 = time.perf_counter()
                shape(events)
                t1 = time.perf_counter()
                writer.write(events, token)
                timings["shape"] += t1 - t0
                timings["replay"] += time.perf_counter() - t1
            replay_ok = _counts(client) == counts == [total] * len(counts)
        finally:
            client.close()

    path = timings["decode"] + timings["write"]
    keys = "skewed" if args.skewed else "uniform"
    print(
        f"{total:,} events in {args.batches} batches of {args.batch_size:,}"
        f" (chDB, 3 rollups, {keys} keys)"
    )
    print(f"{'stage':<34} {'ms/batch':>9} {'events/s':>12}")
    rows = [
        ("decode JSON (msgspec)", timings["decode"]),
        ("write = shape + insert (+ rollups)", timings["write"]),
        ("consumer path = decode + write", path),
        ("of which: shape (polars → Arrow)", timings["shape"]),
        ("replay: write, deduplicated", timings["replay"]),
    ]
    for name, seconds in rows:
        print(f"{name:<34} {seconds / args.batches * 1000:>9.1f} {total / seconds:>12,.0f}")
    rate = total / path
    verdict = "PASS" if rate >= TARGET else "MISS"
    print(f"target ≥ {TARGET:,} events/s for the consumer path: {verdict} ({rate / TARGET:.2f}×)")
    # this process's CPU time, chDB's insert and merge threads included: less sensitive to
    # other load on a shared box than wall-clock time
    cpu = (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)
    print(f"CPU time of the first pass: {cpu:.2f}s ({total / cpu:,.0f} events per CPU-second)")
    print(f"raw and rollups hold {total:,} events, unchanged by the replay: {replay_ok}")
    return 0 if replay_ok else 1


def _counts(client: Client) -> list[int]:
    tables = [(DECISIONS_TABLE, "count()")] + [(t, "sum(requests)") for t in ROLLUP_TABLES.values()]
    return [
        int(client.query(f"SELECT {what} FROM {table}").result_rows[0][0]) for table, what in tables
    ]


if __name__ == "__main__":
    sys.exit(main())
