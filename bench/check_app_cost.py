"""What the limiter's application costs a check, without an HTTP server, and which part.

Usage::

    python bench/check_app_cost.py [--requests 40000] [--callers 64] [--rounds 3]

Starts a private Redis (as ``bench/check_throughput.py`` does), runs the limiter's ASGI
application in this process (its lifespan, the real Redis store) and drives ``POST
/v1/check`` straight through ASGI from ``--callers`` concurrent callers, so no HTTP parsing,
socket or uvicorn is in the numbers.  Three variants of the same application, in
alternating rounds:

* ``full``: as served, one coalesced script call to Redis per batch of waiting checks;
* ``coalescer``: the coalescer in front of a store that answers at once;
* ``handler``: a decider that answers at once: auth cache, body, decoding, response,
  tallies.

Prints this thread's CPU time per request (steadier than wall time on a shared box), median
of the rounds.  A measurement, not a test: exits 0 unless a request was not answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from check_throughput import HOST, free_port, load_average, redis_binary, redis_ping  # noqa: E402

from control.app import LimiterApp, create_app  # noqa: E402
from limiter.algorithms import Outcome, Reason  # noqa: E402
from limiter.coalescer import Coalescer  # noqa: E402
from limiter.settings import LimiterSettings  # noqa: E402
from limiter.state.tenants import FailMode  # noqa: E402
from limiter.store.base import Check  # noqa: E402

OUTCOME = Outcome(True, 999, 60_000, -1, Reason.OK)
BODIES = [b'{"key":"bench:%d","limit":1000000000,"window":60}' % i for i in range(1000)]


class AtOnce:
    """A decider that allows every check without waiting."""

    async def decide(self, checks: Sequence[Check], fail_mode: FailMode) -> list[Outcome]:
        return [OUTCOME] * len(checks)


class CoalescedAtOnce:
    """The coalescer in front of a store that answers in one loop turn."""

    def __init__(self) -> None:
        async def answer(checks: Sequence[Check]) -> list[Outcome]:
            return [OUTCOME] * len(checks)

        self._coalescer = Coalescer(answer)

    async def decide(self, checks: Sequence[Check], fail_mode: FailMode) -> list[Outcome]:
        return await self._coalescer.submit(checks)


async def drive(app: LimiterApp, token: str, requests: int, callers: int) -> tuple[float, int]:
    """Thread CPU seconds per request, and how many were not answered 200."""
    authorization = b"Bearer " + token.encode()
    failed = 0

    async def caller(first: int, count: int) -> None:
        nonlocal failed
        for index in range(first, first + count * 7, 7):
            body = BODIES[index % len(BODIES)]
            scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1",
                "server": (HOST, 8000),
                "client": (HOST, 50000),
                "scheme": "http",
                "root_path": "",
                "headers": [
                    (b"host", b"bench"),
                    (b"content-type", b"application/json"),
                    (b"authorization", authorization),
                    (b"content-length", b"%d" % len(body)),
                ],
                "state": {},
                "method": "POST",
                "path": "/v1/check",
                "raw_path": b"/v1/check",
                "query_string": b"",
            }
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive(messages: list[dict[str, Any]] = messages) -> dict[str, Any]:
                return messages.pop() if messages else {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                nonlocal failed
                if message["type"] == "http.response.start" and message["status"] != 200:
                    failed += 1

            await app(scope, receive, send)

    each = requests // callers
    gc.collect()
    started = time.thread_time()
    await asyncio.gather(*(caller(k, each) for k in range(callers)))
    return (time.thread_time() - started) / (each * callers), failed


async def bench(redis_url: str, args: argparse.Namespace) -> dict[str, list[float]]:
    token = "bench-" + secrets.token_urlsafe(20)
    data_dir = Path(tempfile.mkdtemp(prefix="ratewatch-app-cost-"))
    settings = LimiterSettings(redis_url=redis_url, data_dir=data_dir, key_prefix="appcost")
    app = create_app(settings, secrets.token_bytes(32), bootstrap_key=token)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()
        elif message["type"] == "lifespan.startup.failed":
            raise RuntimeError(message.get("message"))

    lifespan = asyncio.create_task(app({"type": "lifespan", "state": {}}, receive, send))
    await inbox.put({"type": "lifespan.startup"})
    await asyncio.wait_for(started.wait(), 30)
    checks = app._checks  # the handler the app serves, once started
    assert checks is not None
    deciders: dict[str, Any] = {
        "full": checks._decider,
        "coalescer": CoalescedAtOnce(),
        "handler": AtOnce(),
    }
    timings: dict[str, list[float]] = {name: [] for name in deciders}
    failed = 0
    order = list(deciders)
    try:
        for name in order:  # warm-up, discarded
            checks._decider = deciders[name]
            await drive(app, token, args.requests // 5, args.callers)
        for _ in range(args.rounds):
            for name in order:
                checks._decider = deciders[name]
                seconds, bad = await drive(app, token, args.requests, args.callers)
                timings[name].append(seconds * 1e6)
                failed += bad
            order.reverse()
    finally:
        checks._decider = deciders["full"]
        await inbox.put({"type": "lifespan.shutdown"})
        await lifespan
        shutil.rmtree(data_dir, ignore_errors=True)
    if failed:
        raise RuntimeError(f"{failed} requests were not answered 200")
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=40_000, help="requests per round")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are shown")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ratewatch-app-redis-"))
    port = free_port()
    redis = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if redis_ping(port):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis did not answer within 30 s")
            time.sleep(0.05)
        load = load_average()
        timings = uvloop.run(bench(f"redis://{HOST}:{port}", args))
    finally:
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.rounds} rounds of {args.requests:,} POST /v1/check from {args.callers} callers, "
        f"in process (no HTTP server); thread CPU us per request, median (range)"
    )
    for name, values in timings.items():
        print(f"  {name:10} {median(values):6.2f} ({min(values):.2f}..{max(values):.2f})")
    print(f"1-min load average: {load} before, {load_average()} after ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
