"""What acting on a flood of verdicts costs: a campaign of many subjects judged at once, each
verdict a block, an audit entry and an alert (``detectors.actions.BlockActions``).

Usage::

    python bench/verdict_flood.py [--verdicts 1000] [--against REF] [--rounds 1]

It starts a private Redis and applies ``--verdicts`` warranted verdicts, each on a subject
of its own, to one fresh tenant, one after another as the detection loop does, with this
tree's block store and (``--against``, default ``HEAD``) the block store of an earlier
commit (``git show REF:limiter/state/blocks.py``), in alternating rounds, in this process.
Every action asks which blocks the tenant already has (to make no duplicate and to keep the
tenant's cap), so its cost may grow with the blocks made before it.

A limiter's local copy of the blocks (``limiter.state.block_mirror``, of the same commit)
follows the tenant meanwhile: one pass every ten verdicts, each after the version moved.

Prints, per commit: the seconds for the whole flood, the milliseconds per verdict over its
first and its last tenth (their ratio: 1 when an action's cost does not grow with the
blocks before it), the milliseconds of a pass of the copy over the last tenth (the
limiter's event loop is held that long, once a second, while blocks keep coming), and the
ratio of the earlier flood time to this tree's.  A
measurement, not a test: exit status 1 only if the harness failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from check_throughput import (  # noqa: E402
    HOST,
    Processes,
    free_port,
    load_average,
    log,
    redis_binary,
    redis_ping,
    wait_until,
)
from earlier import earlier_class  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from detectors.actions import BlockActions  # noqa: E402
from detectors.offenders import OffenderHistory  # noqa: E402
from detectors.verdict import Signal, Verdict  # noqa: E402
from limiter.keyspace import Keyspace  # noqa: E402
from limiter.state.allowlist import Allowlist  # noqa: E402
from limiter.state.block_mirror import BlockMirror  # noqa: E402
from limiter.state.blocks import BlockStore  # noqa: E402
from limiter.state.tenants import TenantSettingsStore  # noqa: E402
from limiter.store.memory import MemoryStore  # noqa: E402
from stream.alerts import AlertOutbox  # noqa: E402
from stream.audit_outbox import AuditOutbox  # noqa: E402


def verdict(tenant: str, n: int) -> Verdict:
    """A verdict as the isolation detector gives one, its explanation of a usual size."""
    return Verdict(
        tenant=tenant,
        scope="ip",
        subject=f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}",
        score=0.82,
        threshold=0.8,
        detector="isolation",
        detector_version="isolation-2.0.0",
        window_seconds=60,
        observed_at_ms=int(time.time() * 1000),
        reasons=(
            "score 0.82 against threshold 0.80: baseline score 0.92 on its own",
            "6.6 σ of timer-like regularity against a baseline of -4.9 σ",
        ),
        signals=tuple(Signal(f"feature_{i}", 10.0 + i, 1.0 + i, 0.1) for i in range(8)),
    )


async def flood(
    redis: Redis, store_class: type[Any], mirror_class: type[Any], verdicts: int
) -> tuple[list[float], list[float]]:
    """Seconds per verdict, in order, on a fresh tenant; and the seconds of each pass of a
    limiter's copy of the blocks (``BlockMirror``), one every ten verdicts."""
    tenant = "flood" + secrets.token_hex(4)
    keyspace = Keyspace("flood" + secrets.token_hex(4))  # the copy reads this tenant only
    await redis.hsetnx(keyspace.tenants, tenant, "{}")
    mirror = mirror_class(redis, keyspace, MemoryStore(), full_every=10**9)
    await mirror.refresh()
    store = store_class(redis, keyspace)
    actions = BlockActions(
        store,
        Allowlist(redis, keyspace),
        TenantSettingsStore(redis, keyspace),
        OffenderHistory(redis, keyspace),
        AuditOutbox(redis, f"bench:audit:{tenant}"),
        AlertOutbox(redis, f"bench:alerts:{tenant}"),
    )
    await TenantSettingsStore(redis, keyspace).update(tenant, {"max_dynamic_blocks": verdicts})
    times, passes = [], []
    for n in range(verdicts):
        started = time.perf_counter()
        result = await actions.apply(verdict(tenant, n))
        times.append(time.perf_counter() - started)
        if result.outcome != "blocked":
            raise RuntimeError(f"verdict {n} was {result.outcome!r}, not blocked")
        if n % 10 == 9:
            started = time.perf_counter()
            await mirror.refresh()
            passes.append(time.perf_counter() - started)
    if mirror.size != verdicts:
        raise RuntimeError(f"the copy holds {mirror.size} blocks, not {verdicts}")
    return times, passes


async def run(args: argparse.Namespace, port: int) -> None:
    redis = Redis(host=HOST, port=port)
    stores = {
        "this tree": (BlockStore, BlockMirror),
        f"at {args.against}": (
            earlier_class(args.against, "limiter/state/blocks.py", "BlockStore"),
            earlier_class(args.against, "limiter/state/block_mirror.py", "BlockMirror"),
        ),
    }
    totals: dict[str, list[float]] = {name: [] for name in stores}
    tenths: dict[str, list[tuple[float, float]]] = {name: [] for name in stores}
    copies: dict[str, list[float]] = {name: [] for name in stores}
    order = list(stores)
    for round_ in range(args.rounds):
        for name in order if round_ % 2 == 0 else order[::-1]:
            log(f"round {round_ + 1}: {name}")
            store_class, mirror_class = stores[name]
            times, passes = await flood(redis, store_class, mirror_class, args.verdicts)
            tenth = max(1, len(times) // 10)
            last_passes = passes[-max(1, len(passes) // 10) :]
            copies[name].append(sum(last_passes) / len(last_passes) * 1000)
            totals[name].append(sum(times))
            tenths[name].append(
                (sum(times[:tenth]) / tenth * 1000, sum(times[-tenth:]) / tenth * 1000)
            )
    await redis.aclose()
    rounds = f"{args.rounds} round(s)"
    print(f"\n{args.verdicts} verdicts on one tenant, {rounds}, load {load_average()}")
    print(
        f"{'block store':<16} {'seconds':>8} {'ms/verdict first':>17} {'last tenth':>11} "
        f"{'ratio':>6} {'copy pass ms, last tenth':>25}"
    )
    for name in stores:
        first = median(t[0] for t in tenths[name])
        last = median(t[1] for t in tenths[name])
        total = median(totals[name])
        copy = median(copies[name])
        print(
            f"{name:<16} {total:>8.2f} {first:>17.2f} {last:>11.2f} {last / first:>6.1f} "
            f"{copy:>25.2f}"
        )
    now, before = (median(totals[name]) for name in stores)
    print(f"flood time, earlier / this tree: {before / now:.1f}x")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verdicts", type=int, default=1000)
    parser.add_argument("--against", default="HEAD")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rw-verdict-flood-") as work:
        procs = Processes(Path(work))
        try:
            port = free_port()
            argv_ = [redis_binary(), "--port", str(port), "--bind", HOST, "--save", ""]
            argv_ += ["--appendonly", "no", "--dir", work]
            procs.start("redis", argv_, dict(os.environ))
            wait_until(lambda: redis_ping(port), lambda: procs.ensure_alive("redis"), "redis", 30)
            asyncio.run(run(args, port))
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
