"""What the coalescer's tenant fairness costs per request, against an earlier coalescer.

Usage::

    python bench/coalescer_cost.py [--against main] [--rounds 7] [--requests 200000]

Both coalescers run in this process, in alternating rounds, over a store that answers at
once (one loop turn), so what is measured is the coalescer's own Python per request: the
part of ``POST /v1/check`` the fairness change can make slower.  The earlier coalescer is
read from git (``git show <ref>:limiter/coalescer.py``).  Scenarios:

* ``check``: 64 concurrent callers of one tenant, one check each (``/v1/check``);
* ``batch``: 64 concurrent callers of one tenant, 100 checks each (``/v1/batch``);
* ``tenants``: 64 concurrent callers of 64 tenants, one check each;
* ``flood``: 8 callers of one tenant with 390 checks each and 56 callers of other tenants
  with one check each; the p99 wait of the single checks is printed beside the cost.

Prints µs per request (median of the rounds) and the ratio new / earlier; the server's
whole cost of a request (about 150-300 µs on a small machine: ``bench/check_throughput.py``)
is what a difference is to be read against.  A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from earlier import earlier_class  # noqa: E402

from limiter.algorithms import Algorithm, Outcome, Reason  # noqa: E402
from limiter.coalescer import Coalescer  # noqa: E402
from limiter.store.base import Check  # noqa: E402

OUTCOME = Outcome(True, 99, 60_000, -1, Reason.OK)


async def answer(checks: Sequence[Check]) -> list[Outcome]:
    await asyncio.sleep(0)  # a round trip is at least one loop turn
    return [OUTCOME] * len(checks)


def checks_of(tenant: str, count: int) -> list[Check]:
    return [
        Check(tenant, f"k{i}", Algorithm.SLIDING_WINDOW, 100, 60_000, 1, ip="192.0.2.1")
        for i in range(count)
    ]


async def run(
    factory: Callable[..., Any], callers: list[list[Check]], requests: int
) -> tuple[float, float]:
    """µs per request over ``requests`` requests, and the p99 wait (µs) of one-check ones."""
    coalescer = factory(answer)
    per_caller = max(1, requests // len(callers))
    waits: list[float] = []

    async def caller(checks: list[Check]) -> None:
        for _ in range(per_caller):
            started = time.perf_counter()
            await coalescer.submit(checks)
            if len(checks) == 1:
                waits.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller(checks) for checks in callers))
    elapsed = time.perf_counter() - started
    waits.sort()
    p99 = waits[int(len(waits) * 0.99)] * 1e6 if waits else 0.0
    return elapsed / (per_caller * len(callers)) * 1e6, p99


SCENARIOS: dict[str, list[list[Check]]] = {
    "check": [checks_of("t", 1) for _ in range(64)],
    "batch": [checks_of("t", 100) for _ in range(64)],
    "tenants": [checks_of(f"t{i}", 1) for i in range(64)],
    "flood": [checks_of("flood", 390) for _ in range(8)]
    + [checks_of(f"t{i}", 1) for i in range(56)],
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--against", default="main", help="git ref of the earlier coalescer")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=100_000, help="per scenario and round")
    args = parser.parse_args(argv)
    earlier = earlier_class(args.against, "limiter/coalescer.py", "Coalescer")
    print(f"{'scenario':10} {'earlier µs/req':>15} {'new µs/req':>11} {'ratio':>6}   p99 wait of")
    print(f"{'':10} {'':>15} {'':>11} {'':>6}   single checks µs (earlier / new)")
    for name, callers in SCENARIOS.items():
        requests = args.requests // 20 if name in ("batch", "flood") else args.requests
        cost: dict[str, list[float]] = {"earlier": [], "new": []}
        wait: dict[str, list[float]] = {"earlier": [], "new": []}
        for _ in range(args.rounds):
            for label, factory in (("earlier", earlier), ("new", Coalescer)):
                us, p99 = asyncio.run(run(factory, callers, requests))
                cost[label].append(us)
                wait[label].append(p99)
        old, new = median(cost["earlier"]), median(cost["new"])
        waits = f"{median(wait['earlier']):.0f} / {median(wait['new']):.0f}" if name in (
            "tenants", "flood"
        ) else ""  # fmt: skip
        print(f"{name:10} {old:15.2f} {new:11.2f} {new / old:6.3f}   {waits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
