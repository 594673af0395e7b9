"""The detection loop: decisions in, verdicts out, actions taken, every few seconds.

Events arrive in batches from whichever transport the deployment uses (the embedded Valkey
stream, or Kafka for ``ratewatch detect``) and are handed to the detector as they come;
every ``interval`` seconds the detector evaluates the windows up to now and each warranted
verdict goes to the actions (block, audit, alert).  Evaluation is CPU work on polars and
scikit-learn, so it runs on a worker thread and the event loop keeps reading; the models'
fits run on another (``detectors/training.py``), so a round never waits for one.

A round with nothing to judge is skipped: once a round has run after the newest decision
left the window the detector judges (``quiet_ms``, its short window) and no decision
arrived since, the next rounds would judge nobody, so an idle worker does not wake polars
every few seconds for nothing; one round still runs every ``quiet_interval`` seconds, which
keeps the detector's housekeeping (forgetting idle tenants) on time.  In between, while no
decision arrives after traffic stopped, rounds run every ``lull_interval`` seconds instead
of every ``interval``: the evidence they judge only shrinks as it leaves the window, and a
decision that arrives is judged at the next ``interval`` as ever.  A decision stamped
after the last round (a limiter whose clock runs ahead) keeps the rounds at ``interval``
until one has reached its time.

Detection is statistical: an event lost in a crash changes a rate by one, so the sources
acknowledge on receipt (at most once), unlike the analytics pipeline, which must count
every decision exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import polars as pl

from detectors.metrics import DetectionMetrics
from detectors.verdict import Verdict
from limiter.errors import StoreUnavailable
from stream.events import DecisionEvent

log = logging.getLogger("ratewatch.detect")

QUIET_INTERVAL = 60.0  # seconds between the rounds of a detector with nothing to judge
# seconds between the rounds while nothing arrives but the window still holds decisions
LULL_INTERVAL = 10.0
# a source sending a check a second shows its behaviour within seconds: judged that often,
# it is blocked within a few seconds of it (a round costs tens of milliseconds)
EVALUATION_INTERVAL = 2.0


class Detector(Protocol):
    def observe(self, frame: pl.DataFrame) -> None: ...

    def evaluate(self, now_ms: int) -> list[Verdict]: ...

    @property
    def subjects(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class Actions(Protocol):
    async def apply(self, verdict: Verdict) -> Any: ...


@dataclass
class DetectionStats:
    events: int = 0
    evaluations: int = 0
    verdicts: int = 0
    failures: int = 0
    quiet: int = 0  # rounds skipped: nothing to judge
    outcomes: dict[str, int] = field(default_factory=dict)


class DetectionLoop:
    def __init__(
        self,
        detector: Detector,
        actions: Actions,
        interval: float = EVALUATION_INTERVAL,
        metrics: DetectionMetrics | None = None,
        *,
        quiet_ms: int | None = None,
        quiet_interval: float = QUIET_INTERVAL,
        lull_interval: float = LULL_INTERVAL,
    ):
        """``quiet_ms``: how long after its time a decision still counts in what the
        detector judges (None: every round runs); ``quiet_interval``: the seconds between
        the rounds that run while there is nothing to judge; ``lull_interval``: between
        those that run while nothing arrives and the window still holds decisions."""
        if quiet_ms is not None and quiet_ms < 0:
            raise ValueError(f"quiet_ms {quiet_ms!r} must not be negative (or None)")
        if not quiet_interval > 0:
            raise ValueError(f"quiet_interval {quiet_interval!r}s must be positive")
        if not lull_interval > 0:
            raise ValueError(f"lull_interval {lull_interval!r}s must be positive")
        self._detector = detector
        self._actions = actions
        self._interval = interval
        self._quiet_ms = quiet_ms
        self._quiet_interval_ms = quiet_interval * 1000
        self._lull_interval_ms = lull_interval * 1000
        self._pending: list[DecisionEvent] = []
        self._newest_ms: int | None = None  # the time of the newest decision observed
        self._last_round_ms: int | None = None  # when the last round ran
        self.stats = DetectionStats()
        self.metrics = metrics or DetectionMetrics()

    def observe(self, events: Sequence[DecisionEvent]) -> None:
        """Queue ``events`` for the detector (cheap: the frame is built per evaluation)."""
        if not events:
            return
        self._pending.extend(events)
        newest = max(event.ts for event in events)
        if self._newest_ms is None or newest > self._newest_ms:
            self._newest_ms = newest
        self.stats.events += len(events)
        self.metrics.decisions.inc(len(events))

    def quiet(self, now_ms: int) -> bool:
        """Whether the round at ``now_ms`` may be skipped: nothing arrived since the last
        round, and that round ran less than ``quiet_interval`` ago and ``quiet_ms`` or more
        after the newest decision (it judged nobody), or less than ``lull_interval`` ago
        and after the newest decision (it judged everything that had arrived)."""
        last = self._last_round_ms
        if self._quiet_ms is None or self._pending or last is None:
            return False
        newest = self._newest_ms
        if newest is None or last - self._quiet_ms > newest:
            return now_ms - last < self._quiet_interval_ms
        if newest > last:  # held until a round reaches its time
            return False
        return now_ms - last < self._lull_interval_ms

    async def resume(self) -> None:
        """Before the first round: let the actions carry on what a previous detector left
        open (incidents, ``detectors.incidents``).  Redis away at start costs only that:
        campaigns still going on then open new incidents."""
        resume = getattr(self._actions, "resume", None)
        if resume is None:
            return
        try:
            await resume()
        except StoreUnavailable:
            log.warning("open incidents not carried on: Redis did not answer", exc_info=True)

    async def run(
        self, stop: asyncio.Event, take_new: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Evaluate every ``interval`` seconds until ``stop`` is set (skipping the rounds
        that would judge nobody, ``quiet``); ``take_new``, when given, is awaited before
        each round to ``observe`` what arrived since the last."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
            if stop.is_set():
                return
            if take_new is not None:
                await take_new()
            if self.quiet(time.time_ns() // 1_000_000):
                self.stats.quiet += 1
                continue
            try:
                await self.evaluate_once()
            except Exception:  # a bad evaluation must not end detection for good
                self.stats.failures += 1
                self.metrics.evaluation_failures.inc()
                log.exception("detection round failed")

    async def close(self) -> None:
        """Stop the detector's model fits, once ``run`` has ended: the queued ones are
        dropped, the one in progress is finished and saved (on a worker thread, so the
        event loop is not held up meanwhile)."""
        await asyncio.to_thread(self._detector.close)

    async def evaluate_once(self, now_ms: int | None = None) -> list[Verdict]:
        """Hand the queued events to the detector, evaluate, apply; return the verdicts."""
        from detectors.features import decisions_frame

        events, self._pending = self._pending, []
        moment = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        self._last_round_ms = moment

        def work() -> list[Verdict]:
            with self.metrics.evaluation_seconds.time():
                if events:
                    self._detector.observe(decisions_frame(events))
                verdicts = self._detector.evaluate(moment)
            self.metrics.evaluated(len(events), self._detector.subjects)
            return verdicts

        verdicts = await asyncio.to_thread(work)
        self.stats.evaluations += 1
        self.metrics.evaluations.inc()
        for verdict in verdicts:
            if not verdict.warranted:
                continue
            self.stats.verdicts += 1
            result = await self._actions.apply(verdict)
            outcome = str(getattr(result, "outcome", result))
            self.stats.outcomes[outcome] = self.stats.outcomes.get(outcome, 0) + 1
            self.metrics.verdict(verdict.scope, outcome, getattr(result, "offence", None))
            if outcome in ("blocked", "shadowed"):
                log.info(
                    "%s %s %s=%s (score %.2f, %s)",
                    outcome,
                    verdict.tenant,
                    verdict.scope,
                    verdict.subject,
                    verdict.score,
                    "; ".join(verdict.reasons[:2]),
                )
        # actions that group verdicts (incidents) report once per round, not per verdict
        round_ended = getattr(self._actions, "round_ended", None)
        if round_ended is not None:
            await round_ended()
        return verdicts
