"""A round: records sent to the broker together, one batch (a flight) per partition.

A round is *in doubt* while some flight is neither acknowledged nor failed; the sink then
waits for it to settle before replaying, and skips what it did deliver.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from limiter.sinks.events import Record


@dataclass(slots=True)
class Flight:
    """The records (indices into the round) of one batch, and its delivery."""

    indices: list[int]
    future: asyncio.Future[object] | None = None

    @property
    def delivered(self) -> bool:
        future = self.future
        return (
            future is not None
            and future.done()
            and not future.cancelled()
            and future.exception() is None
        )

    @property
    def error(self) -> BaseException | None:
        future = self.future
        if future is None or not future.done() or future.cancelled():
            return None
        return future.exception()


@dataclass(slots=True)
class Round:
    """Records in emit order; ``positions`` are their places in the spool (counted from its
    cursor) when they are replayed from it, None when they come straight from memory.
    The first ``resent`` records were sent before, perhaps delivered: they carry the
    ``ratewatch-resent`` header, so that the consumer checks whether they are stored."""

    records: list[Record]
    positions: list[int] | None = None
    flights: list[Flight] = field(default_factory=list)
    resent: int = 0
    handed: bool = False  # handed to the producer: from then on it may land

    @property
    def replay(self) -> bool:
        return self.positions is not None

    def unsettled(self) -> list[asyncio.Future[object]]:
        return [f.future for f in self.flights if f.future is not None and not f.future.done()]

    def delivered(self) -> bool:
        return sum(len(f.indices) for f in self.flights if f.delivered) == len(self.records)

    def first_error(self) -> BaseException | None:
        return next((f.error for f in self.flights if f.error is not None), None)

    def delivered_positions(self) -> set[int]:
        """Spool positions (or, from memory, round indices) the broker acknowledged."""
        places = self.positions
        return {
            places[i] if places is not None else i
            for flight in self.flights
            if flight.delivered
            for i in flight.indices
        }
