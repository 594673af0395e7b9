"""Can the abuse detector keep up with 10,000 decisions/s?

Usage::

    /work/venv/bin/python bench/detector_throughput.py [--rate 10000] [--minutes 10]
        [--tenants 10] [--interval 5] [--batch-ms 1000] [--seed 7]

Generates ``--minutes`` of mixed traffic at ``--rate`` decisions/s (10 minutes at 10,000/s
is 6 million decisions, in polars frames) with ``tests.support.scenarios``: steady users spread
over ``--tenants`` tenants, and in the last minutes a flash crowd, a NAT customer and one of
each attack.  Then replays it through one ``AbuseDetector`` as the detection loop does:
``observe`` every ``--batch-ms`` of traffic, ``evaluate`` every ``--interval`` seconds of
traffic, timing both (generation is not timed).  The isolation models are fitted on the
detector's fitting thread, as in the service: a round queues the fits it finds due and
does not wait for them; before the next round the replay waits for them, as the seconds
between real rounds would, and that wait is timed apart (with the fits' own duration), so
the evaluation's times are those of the evaluation thread alone.

Prints the work per second of traffic over the whole replay and over its second half (the
long window at least half full, the attacks under way; for runs longer than ten minutes,
once the window is full), the decisions/s the detector could sustain at that cost on this
machine, its ratio to the 10,000/s target, the slowest evaluation, the detector's held rows
and the process's peak memory, plus recall and false positives of the run as a sanity
check.  ``observe`` only queues frames; their normalisation and summarising happen in
``evaluate`` and are counted there.  A measurement, not a test: exit status 0 unless the harness
failed.  The machine has two cores shared with whatever else runs; CPU time is printed
beside wall time for that reason.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from detectors.detector import AbuseDetector  # noqa: E402
from detectors.metrics import DetectionMetrics  # noqa: E402
from detectors.registry import ModelRegistry  # noqa: E402
from tests.support import scenarios  # noqa: E402

TARGET = 10_000
MINUTE_MS = 60_000
T0 = 1_760_000_000_000


def generate(rate: int, minutes: int, tenants: int, seed: int) -> list[scenarios.Traffic]:
    rng = np.random.default_rng(seed)
    end = T0 + minutes * MINUTE_MS
    onset = end - 2 * MINUTE_MS
    # a steady user sends ~4 checks/min on average (lognormal, median 3, capped at 30)
    per_tenant = int(rate * 60 / 4.1 / tenants)
    parts = []
    for t in range(tenants):
        tenant = f"tenant-{t}"
        steady = scenarios.steady_users(rng, tenant, T0, end, users=per_tenant, tag=f"t{t}")
        parts.append(steady)
    first = parts[0].frame
    users = first["user_id"].unique().head(2000).to_list()
    keys = first["key"].unique().head(2000).to_list()
    tenant = "tenant-0"
    parts += [
        scenarios.flash_crowd(rng, "tenant-1", onset, users=2000),
        scenarios.nat_customer(rng, "tenant-2", onset),
        scenarios.credential_stuffing(rng, tenant, onset, victims=users),
        scenarios.leaked_key(rng, tenant, T0, onset),
        scenarios.distributed_scraping(rng, tenant, onset),
        scenarios.single_ip_burst(rng, tenant, onset),
        scenarios.key_enumeration(rng, tenant, onset, real_keys=keys),
        scenarios.low_and_slow(rng, tenant, T0, onset),
    ]
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=TARGET)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--batch-ms", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    started = time.perf_counter()
    parts = generate(args.rate, args.minutes, args.tenants, args.seed)
    frame = scenarios.merge(*parts)
    print(
        f"generated {frame.height:,} decisions over {args.minutes} min "
        f"({frame.height / (args.minutes * 60):,.0f}/s) in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )

    metrics = DetectionMetrics()
    detector = AbuseDetector(registry=ModelRegistry(metrics=metrics))
    ts = frame["ts"].to_numpy()
    end = T0 + args.minutes * MINUTE_MS
    interval_ms = int(args.interval * 1000)
    observe_s: list[float] = []
    evaluate_s: list[tuple[int, float, float]] = []  # (now, wall, cpu)
    waited_s: list[float] = []  # for the previous round's fits, before each round
    flagged: dict[tuple[str, str, str], int] = {}
    cpu_start = time.process_time()
    next_eval = T0 + interval_ms
    for now in range(T0 + args.batch_ms, end + 1, args.batch_ms):
        lo, hi = np.searchsorted(ts, [now - args.batch_ms, now], side="right")
        batch = frame.slice(int(lo), int(hi - lo))
        tick = time.perf_counter()
        detector.observe(batch)
        observe_s.append(time.perf_counter() - tick)
        if now >= next_eval:
            next_eval += interval_ms
            tick = time.perf_counter()
            detector.registry.fits.wait()
            waited_s.append(time.perf_counter() - tick)
            tick, cpu = time.perf_counter(), time.process_time()
            verdicts = detector.evaluate(now)
            evaluate_s.append((now, time.perf_counter() - tick, time.process_time() - cpu))
            for verdict in verdicts:
                flagged.setdefault((verdict.tenant, verdict.scope, verdict.subject), now)
        if (now - T0) % MINUTE_MS == 0:
            minute = (now - T0) // MINUTE_MS
            print(f"  replayed minute {minute}/{args.minutes}", file=sys.stderr)
    detector.close()
    cpu_total = time.process_time() - cpu_start

    report(args, frame.height, observe_s, evaluate_s, cpu_total, detector)
    fits(metrics, evaluate_s, waited_s)
    quality(parts, flagged)
    return 0


def report(
    args: argparse.Namespace,
    decisions: int,
    observe_s: list[float],
    evaluate_s: list[tuple[int, float, float]],
    cpu_total: float,
    detector: AbuseDetector,
) -> None:
    seconds = args.minutes * 60
    steady_from = T0 + 10 * MINUTE_MS if args.minutes > 10 else T0 + (args.minutes // 2) * MINUTE_MS
    steady = [(wall, cpu) for now, wall, cpu in evaluate_s if now > steady_from]
    steady_seconds = len(steady) * args.interval
    observe_total = sum(observe_s)
    evaluate_total = sum(wall for _, wall, _ in evaluate_s)
    per_second = (observe_total + evaluate_total) / seconds
    steady_observe = observe_total / seconds  # observe cost is flat over the run
    steady_per_second = steady_observe + sum(w for w, _ in steady) / max(steady_seconds, 1e-9)
    rate = decisions / seconds
    walls = [wall for _, wall, _ in evaluate_s]
    print()
    print(f"traffic                 {decisions:,} decisions, {seconds} s, {rate:,.0f}/s")
    print(f"observe                 {observe_total:.2f} s total ({len(observe_s)} batches)")
    print(
        f"evaluate                {evaluate_total:.2f} s total, {len(walls)} runs every "
        f"{args.interval:g} s: median {statistics.median(walls) * 1000:.0f} ms, "
        f"max {max(walls) * 1000:.0f} ms"
    )
    wall = observe_total + evaluate_total
    print(f"CPU time                {cpu_total:.2f} s (wall {wall:.2f} s; polars uses both cores)")
    for label, cost in (("whole run", per_second), ("steady state", steady_per_second)):
        capacity = rate / cost
        print(
            f"{label:<23} {cost * 1000:.0f} ms of work per second of traffic -> "
            f"capacity {capacity:,.0f} decisions/s = {capacity / TARGET:.1f}x the "
            f"{TARGET:,}/s target"
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"held rows at the end    {detector.window.rows:,}")
    print(f"peak RSS                {peak_mb:,.0f} MB (includes the generated traffic)")


def fits(
    metrics: DetectionMetrics, evaluate_s: list[tuple[int, float, float]], waited_s: list[float]
) -> None:
    """What the isolation models' fits cost, beside the evaluations."""
    count = total = 0.0
    for family in metrics.fit_seconds.collect():
        for sample in family.samples:
            if sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
    evaluate_total = sum(wall for _, wall, _ in evaluate_s)
    mean = total / count * 1000 if count else 0.0
    print(
        f"model fits              {count:.0f} on the fitting thread, {total:.2f} s in all "
        f"(mean {mean:.0f} ms) = {total / max(evaluate_total, 1e-9):.2f}x the evaluations' time"
    )
    print(
        f"waited for fits         {sum(waited_s):.2f} s before {len(waited_s)} rounds "
        f"(max {max(waited_s, default=0) * 1000:.0f} ms): the time between real rounds"
    )


def quality(parts: list[scenarios.Traffic], flagged: dict[tuple[str, str, str], int]) -> None:
    print()
    legit: set[tuple[str, str, str]] = set()
    for part in parts:
        tenant = part.frame["tenant"][0] if part.frame.height else ""
        legit |= {(tenant, scope, subject) for scope, subject in part.legit}
    for part in parts:
        if not part.attackers:
            continue
        tenant = part.frame["tenant"][0]
        deadline = part.onset_ms + MINUTE_MS
        caught = sum(
            1
            for scope, subject in part.attackers
            if flagged.get((tenant, scope, subject), deadline + 1) <= deadline
        )
        print(f"{part.name:<23} {caught}/{len(part.attackers)} blocked within 60 s")
    wrongly = [subject for subject in flagged if subject in legit]
    share = len(wrongly) / len(legit)
    print(f"legitimate blocked      {len(wrongly)} of {len(legit):,} ({share:.3%})")
    for subject in wrongly[:5]:
        print(f"  {subject}")


if __name__ == "__main__":
    sys.exit(main())
