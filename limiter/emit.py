"""The decision seam: every decision the limiter answers is handed to one sink.

``emit`` is called on the hot path, so a sink must not block or await: it queues the
decision (or drops nothing and spools, for the streaming sinks) and returns.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from limiter.algorithms import Outcome
from limiter.store.base import Check


class Decision(NamedTuple):
    ts_ms: int
    check: Check
    outcome: Outcome
    latency_us: int


class DecisionSink(Protocol):
    def emit(self, decisions: list[Decision]) -> None:
        """Take the decisions of one request; must return without waiting on I/O."""
        ...

    async def close(self) -> None:
        """Flush what is queued; called once at shutdown."""
        ...


class NullSink:
    """Discards decisions: the limiter without a decision stream."""

    def emit(self, decisions: list[Decision]) -> None:
        return None

    async def close(self) -> None:
        return None
