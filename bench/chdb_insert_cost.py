"""What the pipeline worker's inserts cost chDB at a low, steady rate, by setting.

Usage::

    python bench/chdb_insert_cost.py [--rate 200] [--seconds 30] [--rounds 3]
                                     [--variants baseline,...]

Each variant runs in a child process of its own on a fresh chDB directory with the
migrations applied: once a second (``--interval``) it writes the decisions of that second
the way the embedded consumer does (``ClickHouseEventStore``: the batch's cut in
``consumer_batches``, the insert into ``decisions`` and so its rollups, the ledger rows in
``consumed``), for ``--seconds`` after a 10 s warm-up, and prints the CPU cores the
process used (utime + stime from ``/proc``), split into the thread that makes the
statements (chDB runs a statement, its views included, on the caller's thread) and chDB's
background threads (merges, housekeeping); the CPU milliseconds of each statement per batch
(cut / insert / ledger); and the active parts at the end.  The variants run one after the
other in alternating rounds, so that load on a shared box moves them alike; medians are
printed with the load average.

A variant changes what ``analytics.chdb_config`` gives chDB (engine, table or session
settings); ``baseline`` is the configuration as committed, and ``no-views`` detaches the
rollups' six materialized views, to show what they cost (not a configuration anyone runs).
``--rate 1`` against ``--rate 200`` shows how much of an insert's cost is fixed.  This is
a measurement, not a test: it prints numbers and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CLK_TCK = os.sysconf("SC_CLK_TCK")

# name -> (engine settings, merge tree settings, session settings) laid over the committed ones
Settings = dict[str, int | str]
VARIANTS: dict[str, tuple[Settings, Settings, Settings]] = {
    "baseline": ({}, {}, {}),
    "one-thread": ({}, {}, {"max_threads": 1}),
    "pool1": ({"background_pool_size": 1}, {}, {}),
    "no-optimize": ({}, {}, {"optimize_on_insert": 0}),
    "merge-late": ({}, {"merge_selector_base": 8}, {}),
    "lean": ({}, {}, {"optimize_on_insert": 0, "max_threads": 1}),
    "no-stats": ({}, {"auto_statistics_types": ""}, {}),
    "plain-marks": ({}, {"compress_marks": 0, "compress_primary_key": 0}, {}),
    "no-stats-marks": (
        {},
        {"auto_statistics_types": "", "compress_marks": 0, "compress_primary_key": 0},
        {},
    ),
    # not an option: what the rollups' six materialized views cost (detached after migrating)
    "no-views": ({}, {}, {}),
}
VIEWS = [
    f"ratewatch.{scope}decisions_per_{grain}_mv"
    for scope in ("", "tenant_")
    for grain in ("minute", "hour", "day")
]


def thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    found: dict[int, tuple[str, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(task.name)] = (name, int(fields[11]) + int(fields[12]))
    return found


def process_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def child(variant: str, rate: int, seconds: float, interval: float, warmup: float) -> None:
    from analytics import chdb_config

    engine, tree, session = VARIANTS[variant]
    chdb_config.ENGINE_SETTINGS.update(engine)  # type: ignore[arg-type]
    chdb_config.MERGE_TREE_SETTINGS.update(tree)  # type: ignore[arg-type]
    chdb_config.SESSION_SETTINGS.update(session)  # type: ignore[arg-type]

    from analytics.clickhouse import chdb_url, connect
    from analytics.event_store import ClickHouseEventStore
    from analytics.migrate import migrate
    from stream.events import DecisionEvent
    from stream.handlers import Located

    directory = Path(tempfile.mkdtemp(prefix="rw-chdb-cost-"))
    client = connect(chdb_url(directory / "clickhouse"))
    migrate(client)
    if variant == "no-views":
        for view in VIEWS:
            client.command(f"DETACH TABLE {view}")
    store = ClickHouseEventStore(client)
    per_batch = max(1, round(rate * interval))
    offset = 0
    measuring = False
    statements = dict.fromkeys(("plan", "insert", "ledger", "batches"), 0.0)

    def batch() -> None:
        nonlocal offset
        now = int(time.time() * 1000)
        events = []
        for i in range(per_batch):
            offset += 1
            n = offset % 2000
            events.append(
                Located(
                    offset,
                    DecisionEvent(
                        v=1,
                        event_id=str(uuid.uuid4()),
                        ts=now,
                        tenant=f"t{n % 3}",
                        key=f"client:{n}",
                        algorithm="sliding_window",
                        limit=1000,
                        window=60,
                        cost=1,
                        allowed=True,
                        remaining=900,
                        reset_in=30,
                        reason="ok",
                        ip=f"10.0.{n % 250}.{i % 250}",
                        route=f"/api/r{n % 8}",
                        latency_us=400,
                    ),
                )
            )
        t0 = time.thread_time()
        store.plan_batches([("rw:events", 0, events[0].offset, events[-1].offset)])
        t1 = time.thread_time()
        token = f"rw:events:0:{events[0].offset}-{events[-1].offset}"
        stored = store.insert("rw:events", 0, events, token)
        t2 = time.thread_time()
        store.add_to_ledger([("rw:events", 0, stored)], f"{token}/ledger")
        t3 = time.thread_time()
        if measuring:
            statements["plan"] += t1 - t0
            statements["insert"] += t2 - t1
            statements["ledger"] += t3 - t2
            statements["batches"] += 1

    def run(duration: float) -> None:
        due = time.monotonic()
        end = due + duration
        while due < end:
            batch()
            due += interval
            time.sleep(max(0.0, due - time.monotonic()))

    run(warmup)
    measuring = True
    pid = os.getpid()
    main = os.getpid()
    before, started, wall = thread_ticks(pid), process_ticks(pid), time.monotonic()
    run(seconds)
    after, ended, wall = thread_ticks(pid), process_ticks(pid), time.monotonic() - wall
    by_name: Counter[str] = Counter()
    for tid, (name, ticks) in after.items():
        used = ticks - before.get(tid, (name, 0))[1]
        by_name["main" if tid == main else name] += used
    parts = client.query(
        "SELECT table, count() FROM system.parts WHERE database = 'ratewatch' AND active"
        " GROUP BY table ORDER BY table"
    ).result_rows
    print(
        json.dumps(
            {
                "cores": (ended - started) / CLK_TCK / wall,
                "main": by_name.pop("main", 0) / CLK_TCK / wall,
                "threads": {k: v / CLK_TCK / wall for k, v in by_name.most_common(8) if v},
                "parts": sum(n for _, n in parts),
                "ms": {
                    k: 1000 * statements[k] / max(1, statements["batches"])
                    for k in ("plan", "insert", "ledger")
                },
            }
        ),
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=200, help="decisions a second")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between batches")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rate, args.seconds, args.interval, args.warmup)
        return 0
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    loads: list[float] = []
    for round_ in range(args.rounds):
        order = variants if round_ % 2 == 0 else list(reversed(variants))
        for variant in order:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    variant,
                    "--rate",
                    str(args.rate),
                    "--seconds",
                    str(args.seconds),
                    "--warmup",
                    str(args.warmup),
                    "--interval",
                    str(args.interval),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            load = float(Path("/proc/loadavg").read_text().split()[0])
            loads.append(load)
            results[variant].append(result)
            print(
                f"round {round_ + 1} {variant:12s} {result['cores']:.3f} cores "
                f"(main {result['main']:.3f}; ms/batch "
                + "/".join(f"{v:.1f}" for v in result["ms"].values())
                + f") parts {result['parts']} load {load:.2f} "
                + " ".join(f"{k}={v:.3f}" for k, v in result["threads"].items()),
                file=sys.stderr,
                flush=True,
            )
    base = statistics.median(r["cores"] for r in results[variants[0]])
    print(
        f"{args.rate} decisions/s, a batch every {args.interval:g} s, {args.seconds:g} s windows,"
        f" medians of {args.rounds}; load {min(loads):.2f}-{max(loads):.2f}"
    )
    print(
        f"{'variant':14s} {'cores':>7s} {'main':>7s} {'others':>7s} {'parts':>6s}"
        f"  {'ms cut/insert/ledger':>20s}  vs {variants[0]}"
    )
    for variant in variants:
        cores = statistics.median(r["cores"] for r in results[variant])
        main_ = statistics.median(r["main"] for r in results[variant])
        parts = statistics.median(r["parts"] for r in results[variant])
        ms = "/".join(
            f"{statistics.median(r['ms'][k] for r in results[variant]):.1f}"
            for k in ("plan", "insert", "ledger")
        )
        print(
            f"{variant:14s} {cores:7.3f} {main_:7.3f} {cores - main_:7.3f} {parts:6.0f}"
            f"  {ms:>20s}  {cores / base if base else float('nan'):.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
