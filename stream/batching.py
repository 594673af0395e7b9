"""When a decision consumer writes what it has read: in inserts sized for ClickHouse.

Every insert into ``ratewatch.decisions`` fans out into the rollups' materialized views and
makes a new part in each of their tables, which background merges fold together later; the
statements around it (the batch's recorded cut, the ledger of stored offsets) make parts
too.  Written as it is read, a trickle of traffic would become several tiny inserts a
second.  So both consumers (``stream.redis_consumer`` on the Valkey stream,
``stream.kafka_consumer`` on Kafka) keep what they read in a ``Pending`` and write it once
``BatchBounds.max_decisions`` decisions are in hand, or ``BatchBounds.max_age`` seconds
after the first of them was read, whichever comes first: about one insert a second at low
rates, inserts of ``max_decisions`` decisions at high ones.

Nothing is acknowledged or committed before it is stored, as before: a consumer that dies
holding decisions leaves them pending (Valkey) or uncommitted (Kafka), and they are read
again.  The age bound adds to the time an answered decision takes to reach ClickHouse, so it
stays well under the 2 s that analytics may lag.

Only the standard library is imported here: the command line takes its defaults from it.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_MAX_DECISIONS = 50_000
DEFAULT_MAX_AGE = 1.0
MAX_DECISIONS_LIMIT = 1_000_000  # an insert of more holds too much in memory for no gain
MAX_AGE_LIMIT = 60.0


@dataclass(frozen=True)
class BatchBounds:
    """A batch is written once it holds ``max_decisions`` decisions (a larger one is cut
    there), or ``max_age`` seconds after its first decision was read (0: at every read)."""

    max_decisions: int = DEFAULT_MAX_DECISIONS
    max_age: float = DEFAULT_MAX_AGE

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_decisions, bool)
            or not isinstance(self.max_decisions, int)
            or not 1 <= self.max_decisions <= MAX_DECISIONS_LIMIT
        ):
            raise ValueError(
                f"the batch size must be 1 to {MAX_DECISIONS_LIMIT} decisions, "
                f"not {self.max_decisions!r}"
            )
        if (
            isinstance(self.max_age, bool)
            or not isinstance(self.max_age, (int, float))
            or not math.isfinite(self.max_age)
            or not 0 <= self.max_age <= MAX_AGE_LIMIT
        ):
            raise ValueError(
                f"the batch age must be 0 to {MAX_AGE_LIMIT:g} seconds, not {self.max_age!r}"
            )


class Pending(Generic[T]):
    """What a consumer has read and not written yet, oldest first: each item with its
    number of decisions (a Valkey stream entry holds those of one check-script call, a Kafka
    record one) and the time it was read (``time.monotonic()``)."""

    def __init__(self, bounds: BatchBounds) -> None:
        self.bounds = bounds
        self._items: list[T] = []
        self._sizes: list[int] = []
        self._read_at: list[float] = []
        self.decisions = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, items: Sequence[T], read_at: float, sizes: Sequence[int] | None = None) -> None:
        """``items``, read at ``read_at``; ``sizes`` are their decisions (one each if None)."""
        counts = [1] * len(items) if sizes is None else list(sizes)
        if len(counts) != len(items):
            raise ValueError(f"{len(counts)} sizes for {len(items)} items")
        self._items.extend(items)
        self._sizes.extend(counts)
        self._read_at.extend(itertools.repeat(read_at, len(items)))
        self.decisions += sum(counts)

    def deadline(self) -> float | None:
        """When the oldest item must be written by; None when nothing is pending."""
        return self._read_at[0] + self.bounds.max_age if self._items else None

    def due(self, now: float) -> bool:
        """Whether a batch is to be written now: it is full, or its first item is old."""
        if not self._items:
            return False
        return self.decisions >= self.bounds.max_decisions or now >= (
            self._read_at[0] + self.bounds.max_age
        )

    def take(self) -> list[T]:
        """The next batch: the oldest items up to ``max_decisions`` decisions in all (at least
        one item, however many it holds); the rest stays pending as it was read."""
        totals = list(itertools.accumulate(self._sizes))
        end = max(1, bisect.bisect_right(totals, self.bounds.max_decisions))
        return self._cut(end)

    def take_all(self) -> list[T]:
        """Everything pending, in order."""
        return self._cut(len(self._items))

    def discard(self, drop: Callable[[T], bool]) -> int:
        """Forget the items ``drop`` selects (read again later from their source); how many."""
        kept = [i for i, item in enumerate(self._items) if not drop(item)]
        dropped = len(self._items) - len(kept)
        if dropped:
            self._items = [self._items[i] for i in kept]
            self._sizes = [self._sizes[i] for i in kept]
            self._read_at = [self._read_at[i] for i in kept]
            self.decisions = sum(self._sizes)
        return dropped

    def _cut(self, end: int) -> list[T]:
        batch = self._items[:end]
        self.decisions -= sum(self._sizes[:end])
        del self._items[:end], self._sizes[:end], self._read_at[:end]
        return batch
