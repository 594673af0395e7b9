"""The detection loop's rounds: every interval while there is something to judge, and only
now and then once the newest decision has left the window the detector judges."""

from __future__ import annotations

import asyncio

import polars as pl
import pytest

from detectors.runner import DetectionLoop
from detectors.verdict import Verdict
from tests.support.events import decision
from tests.support.polling import until

pytestmark = pytest.mark.timeout(30)

SHORT_MS = 60_000


class CountingDetector:
    """Counts what it is given and asked; judges nobody."""

    def __init__(self) -> None:
        self.observed = 0
        self.rounds: list[int] = []

    def observe(self, frame: pl.DataFrame) -> None:
        self.observed += frame.height

    def evaluate(self, now_ms: int) -> list[Verdict]:
        self.rounds.append(now_ms)
        return []

    @property
    def subjects(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        return None


class NoActions:
    async def apply(self, verdict: Verdict) -> str:
        raise AssertionError(f"no verdict expected, got {verdict}")


def detection(
    quiet_ms: int | None = SHORT_MS,
    interval: float = 5.0,
    quiet_interval: float = 60.0,
    lull_interval: float = 20.0,
) -> DetectionLoop:
    return DetectionLoop(
        CountingDetector(),
        NoActions(),
        interval,
        quiet_ms=quiet_ms,
        quiet_interval=quiet_interval,
        lull_interval=lull_interval,
    )


def rounds(loop: DetectionLoop) -> list[int]:
    detector = loop._detector
    assert isinstance(detector, CountingDetector)
    return detector.rounds


async def test_rounds_run_while_decisions_arrive_or_are_still_judged() -> None:
    loop = detection()
    assert not loop.quiet(1_000_000)  # no round yet: the first one runs
    await loop.evaluate_once(1_000_000)
    # nothing ever arrived and a round ran: the next ones would judge nobody
    assert loop.quiet(1_005_000)

    loop.observe([decision(ts=1_006_000)])
    assert not loop.quiet(1_010_000)  # something arrived
    await loop.evaluate_once(1_010_000)
    # nothing new, but the decision is still in the short window: its rounds still run,
    # every lull interval (20 s) rather than every interval (5 s)
    assert loop.quiet(1_015_000)
    assert not loop.quiet(1_030_000)
    await loop.evaluate_once(1_006_000 + SHORT_MS)
    assert not loop.quiet(1_006_000 + SHORT_MS + 20_000)  # the last round still saw it
    await loop.evaluate_once(1_006_000 + SHORT_MS + 1)  # the first round past it
    assert loop.quiet(1_006_000 + SHORT_MS + 20_000)  # judged nobody: quiet interval
    assert not loop.quiet(1_006_000 + SHORT_MS + 60_001)
    assert rounds(loop)[-1] == 1_006_000 + SHORT_MS + 1


async def test_a_decision_in_a_lull_is_judged_at_the_next_interval() -> None:
    loop = detection()
    loop.observe([decision(ts=1_000_000)])
    await loop.evaluate_once(1_001_000)
    assert loop.quiet(1_006_000)  # a lull: nothing arrived since
    loop.observe([decision(ts=1_005_500)])
    assert not loop.quiet(1_006_000)  # judged now, not a lull interval later


async def test_a_quiet_detector_still_runs_a_round_every_quiet_interval() -> None:
    loop = detection(quiet_interval=60.0)
    await loop.evaluate_once(1_000_000)
    assert loop.quiet(1_059_999)
    assert not loop.quiet(1_060_000)  # housekeeping, such as forgetting idle tenants


async def test_a_decision_from_the_future_keeps_the_rounds_running() -> None:
    loop = detection()
    loop.observe([decision(ts=5_000_000)])  # a limiter whose clock runs ahead
    await loop.evaluate_once(1_000_000)
    assert not loop.quiet(1_005_000)


async def test_without_quiet_ms_every_round_runs() -> None:
    loop = detection(quiet_ms=None)
    await loop.evaluate_once(1_000_000)
    assert not loop.quiet(1_005_000)


async def test_the_loop_skips_quiet_rounds_and_resumes_when_decisions_arrive() -> None:
    loop = detection(quiet_ms=0, interval=0.01, quiet_interval=30.0)
    stop = asyncio.Event()
    runner = asyncio.create_task(loop.run(stop))
    try:
        await until(lambda: loop.stats.quiet >= 5, "quiet rounds to be skipped")
        assert len(rounds(loop)) == 1  # the first round only
        loop.observe([decision(), decision()])
        await until(lambda: len(rounds(loop)) >= 2, "a round for the new decisions")
        detector = loop._detector
        assert isinstance(detector, CountingDetector)
        assert detector.observed == 2
    finally:
        stop.set()
        await runner


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quiet_ms": -1}, "quiet_ms -1 must not be negative"),
        ({"quiet_interval": 0.0}, "quiet_interval 0.0s must be positive"),
        ({"lull_interval": -1.0}, "lull_interval -1.0s must be positive"),
    ],
)
def test_bad_settings_are_refused_naming_the_value(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DetectionLoop(CountingDetector(), NoActions(), **options)  # type: ignore[arg-type]
