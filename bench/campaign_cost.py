"""What does campaign detection add to a detection round?

Usage::

    /work/main/.venv/bin/python bench/campaign_cost.py [--rate 2000] [--minutes 4]
        [--tenants 10] [--interval 5] [--seed 7]

Generates ``--minutes`` of mixed traffic at ``--rate`` decisions/s with the generator of
``bench/detector_throughput.py`` (steady users over ``--tenants`` tenants, then a flash
crowd, a NAT customer and one of each attack, distributed scraping included) and replays
it three times, as the detection loop does (frames of one second, a round every
``--interval`` seconds): through the per-source ``AbuseDetector`` (the baseline), through the
campaign part of ``CoordinatedDetector`` without pressed accounts (``detectors/sources.py``
and ``detectors/campaigns.py``: what it was before ``detectors/targets.py``) and with them,
as it runs beside the per-source detector in each round.  Prints the CPU seconds of each
per second of traffic, the decisions/s each could sustain on one core at that cost, and
their ratios; plus the campaigns found.  A measurement, not a test; the box
is shared, so read it with the load average it prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.detector_throughput import MINUTE_MS, T0, generate  # noqa: E402
from detectors.campaigns import Campaign, CampaignDetector  # noqa: E402
from detectors.detector import AbuseDetector  # noqa: E402
from detectors.targets import TargetDetector  # noqa: E402
from tests.support import scenarios  # noqa: E402


class _CampaignsOnly:
    """The campaign part of ``CoordinatedDetector`` alone, for timing it apart."""

    def __init__(self, *, targets: bool = True) -> None:
        self.campaigns = CampaignDetector()
        self.targets = TargetDetector(sources=self.campaigns.book) if targets else None
        self._frames: list[pl.DataFrame] = []

    def observe(self, frame: pl.DataFrame) -> None:
        self._frames.append(frame)

    def evaluate(self, now_ms: int) -> None:
        frames, self._frames = self._frames, []
        if frames:  # as CoordinatedDetector: the round's frames in one pass
            decisions = pl.concat(frames, how="vertical_relaxed")
            self.campaigns.book.observe(decisions)
            if self.targets is not None:
                self.targets.book.observe(decisions)
        if self.targets is not None:
            self.targets.evaluate(now_ms)
        self.campaigns.evaluate(now_ms)

    @property
    def found(self) -> list[Campaign]:
        pressed = self.targets.campaigns if self.targets is not None else []
        return [*pressed, *self.campaigns.campaigns]


def replay(
    detector: AbuseDetector | _CampaignsOnly, frame: pl.DataFrame, minutes: int, interval_ms: int
) -> float:
    """CPU seconds (all threads: polars works on several) ``detector`` spent observing and
    evaluating ``frame``; the per-source detector's model fits are waited for after each
    round, untimed, as they run between rounds in the service."""
    ts = frame["ts"].to_numpy()
    spent = 0.0
    next_eval = T0 + interval_ms
    for now in range(T0 + 1000, T0 + minutes * MINUTE_MS + 1, 1000):
        lo, hi = np.searchsorted(ts, [now - 1000, now], side="right")
        cpu = time.process_time()
        detector.observe(frame.slice(int(lo), int(hi - lo)))
        due = now >= next_eval
        if due:
            next_eval += interval_ms
            detector.evaluate(now)
        spent += time.process_time() - cpu
        if due and isinstance(detector, AbuseDetector):
            detector.registry.fits.wait()
    if isinstance(detector, AbuseDetector):
        detector.close()
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--minutes", type=int, default=4)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.rate <= 0 or args.minutes < 3 or args.interval <= 0:
        parser.error("--rate and --interval must be positive, --minutes at least 3")

    frame = scenarios.merge(*generate(args.rate, args.minutes, args.tenants, args.seed))
    seconds = args.minutes * 60
    interval_ms = int(args.interval * 1000)
    print(f"load average before: {_load()}")
    print(f"{frame.height:,} decisions over {seconds} s ({frame.height / seconds:,.0f}/s)")
    baseline = replay(AbuseDetector(), frame, args.minutes, interval_ms)
    before = replay(_CampaignsOnly(targets=False), frame, args.minutes, interval_ms)
    only = _CampaignsOnly()
    campaigns = replay(only, frame, args.minutes, interval_ms)
    found = only.found
    for name, spent in (
        ("per-source", baseline),
        ("campaigns without pressed accounts", before),
        ("campaigns", campaigns),
    ):
        per_second = spent / seconds
        print(
            f"{name:34} {per_second * 1000:7.1f} ms CPU per second of traffic, "
            f"sustains ~{frame.height / seconds / per_second:,.0f} decisions/s on one core"
        )
    print(f"campaigns / per-source CPU: {campaigns / baseline:.2f}")
    print(f"campaigns with / without pressed accounts: {campaigns / before:.2f}")
    print(
        f"campaigns open at the end: {len(found)} "
        + ", ".join(f"{c.family} ({len(c.members)} addresses)" for c in found)
    )
    print(f"load average after: {_load()}")
    return 0


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
