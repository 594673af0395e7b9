"""The detection loop: decisions in, verdicts out, actions taken, every few seconds.

Events arrive in batches from whichever transport the deployment uses (the embedded Valkey
stream, or Kafka for ``ratewatch detect``) and are handed to the detector as they come;
every ``interval`` seconds the detector evaluates the windows up to now and each warranted
verdict goes to the actions (block, audit, alert).  Evaluation is CPU work on polars and
scikit-learn, so it runs on a worker thread and the event loop keeps reading; the models'
fits run on another (``detectors/training.py``), so a round never waits for one.

Detection is statistical: an event lost in a crash changes a rate by one, so the sources
acknowledge on receipt (at most once), unlike the analytics pipeline, which must count
every decision exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import polars as pl

from detectors.metrics import DetectionMetrics
from detectors.verdict import Verdict
from stream.events import DecisionEvent

log = logging.getLogger("ratewatch.detect")


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
    outcomes: dict[str, int] = field(default_factory=dict)


class DetectionLoop:
    def __init__(
        self,
        detector: Detector,
        actions: Actions,
        interval: float = 5.0,
        metrics: DetectionMetrics | None = None,
    ):
        self._detector = detector
        self._actions = actions
        self._interval = interval
        self._pending: list[DecisionEvent] = []
        self.stats = DetectionStats()
        self.metrics = metrics or DetectionMetrics()

    def observe(self, events: Sequence[DecisionEvent]) -> None:
        """Queue ``events`` for the detector (cheap: the frame is built per evaluation)."""
        self._pending.extend(events)
        self.stats.events += len(events)
        self.metrics.decisions.inc(len(events))

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluate every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
            if stop.is_set():
                return
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
        return verdicts
