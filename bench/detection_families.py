"""How well does detection generalize?  Families of traffic drawn per seed, replayed offline.

Usage::

    /work/main/.venv/bin/python bench/detection_families.py [--train-seeds 1-10]
        [--test-seeds 101-120] [--duration 240] [--attack-at 90] [--scale 1] [--interval 5]

For each seed, ``ratewatch.simulate.families.draw_mix`` draws every family (attacks and
legitimate patterns) with randomized parameters; the checks are answered by a fixed-window
count per key (as the limiter would, without blocks) and fed straight into an
``AbuseDetector`` as the detection loop does (``observe`` every second of traffic,
``evaluate`` every ``--interval`` seconds), without servers.  Each warranted verdict counts
as a block at the moment of the evaluation; ``ratewatch.simulate.scorer`` scores them
against the labels as ``ratewatch simulate`` scores the blocks of a live run.

The protocol: thresholds and models may be chosen on the *training* seeds only; every
number of the headline comes from the *held-out* seeds (``--test-seeds``), per family, as
the median over seeds with its interquartile range and min-max.  The training seeds'
numbers are printed apart, marked as such, for whoever tunes.  A measurement, not a test:
exit status 0 unless the harness failed (2 on bad arguments).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from detectors.coordinated import CoordinatedDetector  # noqa: E402
from detectors.detector import AbuseDetector  # noqa: E402
from detectors.features import FRAME_SCHEMA  # noqa: E402
from ratewatch.simulate.driver import SeenBlock  # noqa: E402
from ratewatch.simulate.families import FAMILIES, draw_mix  # noqa: E402
from ratewatch.simulate.model import Request, Timeline  # noqa: E402
from ratewatch.simulate.scorer import Score, Stats, score  # noqa: E402

T0 = 1_760_000_000_000
TENANT = "families"
WINDOW = 60.0  # recall counts blocks within this many seconds of a subject's onset
# the per-source detectors' remit: a source sending at least this many checks a second
# shows its behaviour within seconds (slower ones are a campaign's, seen together)
FAST = 1.0

DetectorFactory = Callable[[int], AbuseDetector | CoordinatedDetector]


def seeds(text: str) -> list[int]:
    """``1-10``, ``101,105,110-112`` or ``none`` (an empty set) as a list of seeds."""
    if text.strip().lower() == "none":
        return []
    found: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            first, last = int(lo), int(hi or lo)
            if last < first:
                raise ValueError
            found.extend(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad seed list {text!r}: e.g. 1-10 or 3,5,8-9") from None
    return sorted(set(found))


class FixedWindow:
    """The limiter's answer to each check, counted per key in fixed windows."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, int]] = {}

    def decide(self, key: str, limit: int, window: int, at: float, cost: int) -> tuple[bool, int]:
        slot = int(at // window)
        start, used = self._counts.get(key, (slot, 0))
        used = (used if start == slot else 0) + cost
        self._counts[key] = (slot, used)
        return used <= limit, max(0, limit - used)


@dataclass
class Rows:
    columns: dict[str, list[object]] = field(
        default_factory=lambda: {name: [] for name in FRAME_SCHEMA}
    )

    def add(self, ms: int, request: Request, allowed: bool, remaining: int) -> None:
        check, c = request.check, self.columns
        c["ts"].append(ms)
        c["tenant"].append(TENANT)
        c["key"].append(check.key)
        c["ip"].append(check.ip)
        c["user_id"].append(check.user_id)
        c["route"].append(check.route)
        c["user_agent"].append(check.user_agent)
        c["allowed"].append(allowed)
        c["remaining"].append(remaining)
        c["reason"].append("ok" if allowed else "limit")

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.columns, schema=FRAME_SCHEMA).sort("ts")


def default_detector(seed: int) -> CoordinatedDetector:
    """The detector as shipped: per-source detection and campaign detection."""
    return CoordinatedDetector(AbuseDetector(seed=seed))


def per_source_detector(seed: int) -> AbuseDetector:
    """Per-source detection alone (``--per-source-only``): the baseline campaigns add to."""
    return AbuseDetector(seed=seed)


def run_seed(
    seed: int,
    *,
    timeline: Timeline,
    scale: float,
    interval: float,
    detector_factory: DetectorFactory = default_detector,
) -> Score:
    """One seed's mix replayed through a fresh detector, scored."""
    simulation = draw_mix(seed, timeline=timeline, scale=scale).simulation(
        scale=scale, timeline=timeline
    )
    detector = detector_factory(seed)
    limiter, jitter = FixedWindow(), random.Random(f"ratewatch-families:{seed}:jitter")
    blocks: dict[tuple[str, str], SeenBlock] = {}
    ticks_per_second = max(1, round(1 / timeline.tick))
    next_eval = interval
    rows = Rows()
    try:
        for k in range(timeline.ticks):
            t = k * timeline.tick
            for request in simulation.tick(k):
                at = t + jitter.random() * timeline.tick
                check = request.check
                allowed, remaining = limiter.decide(
                    check.key, check.limit, check.window, at, check.cost
                )
                rows.add(T0 + int(at * 1000), request, allowed, remaining)
            if (k + 1) % ticks_per_second:
                continue
            detector.observe(rows.frame())
            rows = Rows()
            now = (k + 1) * timeline.tick
            if now + 1e-9 < next_eval:
                continue
            next_eval += interval
            detector.registry.fits.wait()  # the seconds between real rounds
            for verdict in detector.evaluate(T0 + int(now * 1000)):
                identity = (verdict.scope, verdict.subject)
                if identity not in blocks:
                    blocks[identity] = SeenBlock(
                        f"{verdict.scope}:{verdict.subject}",
                        verdict.scope,
                        verdict.subject,
                        "enforce",
                        now,
                        detector=verdict.detector,
                    )
    finally:
        detector.close()
    return score(
        [(s.name, s.kind, s.subjects()) for s in simulation.scenarios],
        {},
        blocks.values(),
        end=timeline.duration,
    )


# --- aggregation over seeds ---------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    lo = int(position)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (position - lo)


@dataclass(frozen=True)
class Spread:
    """A number over seeds: median, interquartile range, min-max, how many seeds."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        if not values:
            return None
        return cls(
            statistics.median(values),
            quantile(values, 0.25),
            quantile(values, 0.75),
            min(values),
            max(values),
            len(values),
        )

    def show(self, fmt: str = ".2f") -> str:
        return (
            f"{self.median:{fmt}} [IQR {self.q1:{fmt}}-{self.q3:{fmt}}, "
            f"min-max {self.low:{fmt}}-{self.high:{fmt}}, {self.n} seeds]"
        )


@dataclass(frozen=True)
class FamilyResult:
    name: str
    kind: str
    recall: Spread | None = None  # attack: within WINDOW of onset
    recall_fast: Spread | None = None  # the same, over the seeds drawn at >= FAST checks/s
    ttb_p50: Spread | None = None  # attack: seconds, per seed
    ttb_p95: Spread | None = None
    false_block: Spread | None = None  # legit: share of subjects ever blocked
    subjects: int = 0
    blocked: int = 0


def summarise(
    scores: Sequence[Score], rates: Sequence[dict[str, float]] = ()
) -> list[FamilyResult]:
    """Per family, its numbers over ``scores`` (one per seed); ``rates``, per seed, each
    family's drawn checks/s per source (``family_rates``)."""
    by_family: dict[str, list[Stats]] = {}
    fast: dict[str, list[bool]] = {}
    for n, result in enumerate(scores):
        for stats in result.scenarios:
            by_family.setdefault(stats.name, []).append(stats)
            rate = rates[n].get(stats.name) if n < len(rates) else None
            fast.setdefault(stats.name, []).append(rate is not None and rate >= FAST)
    results = []
    for name in FAMILIES:
        runs = by_family.get(name, [])
        if not runs:
            continue
        kind = runs[0].kind
        if kind == "attack":
            recall = [s.recall_in_window for s in runs if s.recall_in_window is not None]
            quick = [
                s.recall_in_window
                for s, is_fast in zip(runs, fast[name], strict=True)
                if is_fast and s.recall_in_window is not None
            ]
            p50 = [s.time_to_block(0.5) for s in runs]
            p95 = [s.time_to_block(0.95) for s in runs]
            results.append(
                FamilyResult(
                    name,
                    kind,
                    recall=Spread.of(recall),
                    recall_fast=Spread.of(quick),
                    ttb_p50=Spread.of([v for v in p50 if v is not None]),
                    ttb_p95=Spread.of([v for v in p95 if v is not None]),
                    subjects=sum(s.attack for s in runs),
                    blocked=sum(s.attack_blocked_in_window for s in runs),
                )
            )
        # the legitimate subjects of every family (a leaked key's owner too)
        legit = [s for s in runs if s.legit]
        if legit:
            results.append(
                FamilyResult(
                    name,
                    "legit",
                    false_block=Spread.of([s.legit_blocked / s.legit for s in legit]),
                    subjects=sum(s.legit for s in legit),
                    blocked=sum(s.legit_blocked for s in legit),
                )
            )
    return results


def render(title: str, results: Sequence[FamilyResult]) -> str:
    lines = [title, ""]
    lines.append(f"attack families: recall within {WINDOW:g} s of onset; time to block (s)")
    for r in results:
        if r.kind != "attack":
            continue
        recall = r.recall.show() if r.recall else "n/a"
        lines.append(f"  {r.name:<22} recall {recall}  ({r.blocked}/{r.subjects} sources)")
        fast = r.recall_fast.show() if r.recall_fast else "no seed drawn that fast"
        lines.append(f"  {'':<22} at >= {FAST:g}/s {fast}")
        p50 = r.ttb_p50.show(".0f") if r.ttb_p50 else "none blocked"
        p95 = r.ttb_p95.show(".0f") if r.ttb_p95 else "none blocked"
        lines.append(f"  {'':<22} time to block p50 {p50}")
        lines.append(f"  {'':<22} time to block p95 {p95}")
    lines.append("")
    lines.append("legitimate subjects: share ever blocked (false-block rate)")
    for r in results:
        if r.kind != "legit" or r.false_block is None:
            continue
        lines.append(
            f"  {r.name:<22} {r.false_block.show('.3f')}  ({r.blocked}/{r.subjects} subjects)"
        )
    return "\n".join(lines)


def family_rates(seed: int, *, timeline: Timeline, scale: float) -> dict[str, float]:
    """Each attack family's drawn checks/s per source in ``seed``'s mix."""
    mix = draw_mix(seed, timeline=timeline, scale=scale)
    return {
        i.name: float(rate)
        for i in mix.instances
        if isinstance(rate := i.params.get("rate"), float | int)
    }


def evaluate(
    seed_list: Sequence[int],
    *,
    timeline: Timeline,
    scale: float,
    interval: float,
    detector_factory: DetectorFactory = default_detector,
    progress: Callable[[str], None] = lambda line: None,
) -> list[Score]:
    scores = []
    for seed in seed_list:
        started = time.perf_counter()
        scores.append(
            run_seed(
                seed,
                timeline=timeline,
                scale=scale,
                interval=interval,
                detector_factory=detector_factory,
            )
        )
        progress(f"  seed {seed}: {time.perf_counter() - started:.1f} s")
    return scores


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-seeds", type=seeds, default=seeds("1-10"))
    parser.add_argument("--test-seeds", type=seeds, default=seeds("101-120"))
    parser.add_argument("--duration", type=float, default=240.0)
    parser.add_argument("--attack-at", type=float, default=90.0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument(
        "--per-source-only",
        action="store_true",
        help="without campaign detection (detectors/campaigns.py), for comparison",
    )
    args = parser.parse_args(argv)
    if not args.test_seeds:
        parser.error("--test-seeds: at least one held-out seed")
    overlap = sorted(set(args.train_seeds) & set(args.test_seeds))
    if overlap:
        parser.error(f"seeds {overlap} are both training and held-out seeds")
    if args.scale <= 0 or args.interval <= 0:
        parser.error(f"--scale ({args.scale:g}) and --interval ({args.interval:g}) must be > 0")
    try:
        timeline = Timeline(args.duration, args.attack_at)
    except ValueError as exc:
        parser.error(str(exc))

    def progress(line: str) -> None:
        print(line, file=sys.stderr)

    factory = per_source_detector if args.per_source_only else default_detector
    options = {
        "timeline": timeline,
        "scale": args.scale,
        "interval": args.interval,
        "detector_factory": factory,
    }
    rate_options = {"timeline": timeline, "scale": args.scale}
    if args.train_seeds:
        progress(f"training seeds {args.train_seeds[0]}..{args.train_seeds[-1]}")
        train = evaluate(args.train_seeds, progress=progress, **options)
        print(
            render(
                f"TRAINING seeds ({len(args.train_seeds)}): for choosing thresholds and "
                "models only, not a result",
                summarise(train, [family_rates(s, **rate_options) for s in args.train_seeds]),
            )
        )
        print()
    progress(f"held-out seeds {args.test_seeds[0]}..{args.test_seeds[-1]}")
    test = evaluate(args.test_seeds, progress=progress, **options)
    print(
        render(
            f"HELD-OUT seeds ({len(args.test_seeds)}: {args.test_seeds[0]}..."
            f"{args.test_seeds[-1]}), {args.duration:g} s runs, attacks from "
            f"{args.attack_at:g} s: the reported numbers",
            summarise(test, [family_rates(s, **rate_options) for s in args.test_seeds]),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
