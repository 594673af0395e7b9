"""When a decision consumer writes what it has read: in inserts sized for ClickHouse.

Every insert into ``ratewatch.decisions`` fans out into the rollups' materialized views and
makes a new part in each of their tables, which background merges fold together later; the
statements around it (the batch's recorded cut, the ledger of stored offsets) make parts
too.  Written as it is read, a trickle of traffic would become several tiny inserts a
second, and each insert costs chDB about the same whether it holds one decision or
thousands.  So both consumers (``stream.redis_consumer`` on the Valkey stream,
``stream.kafka_consumer`` on Kafka) keep what they read in a ``Pending`` and write it once
it is due (``BatchBounds``), whichever comes first:

- it holds ``max_decisions`` decisions: an insert of that many (a larger batch is cut);
- it holds ``min_decisions`` (1,000: what ClickHouse's guidance calls a batch worth an
  insert) and its first decision was read ``min_age`` seconds ago (1 s): at busy times about
  one insert a second;
- its first decision was read ``max_age`` seconds ago (5 s): a trickle is inserted that
  often, never later.

The batch that follows one of ``min_decisions`` or more goes by ``min_age`` however small it
is, so that when a busy stream falls quiet its last decisions are not held for ``max_age``.

At 2,000 checks/s a batch is due after a second; at 200/s every five seconds, a fifth of the
inserts (and of the merges behind them) that one a second would make.  Nothing is
acknowledged or committed before it is stored, as before: a consumer that dies holding
decisions leaves them pending (Valkey) or uncommitted (Kafka), and they are read again.
The bounds add to the time an answered decision takes to reach ClickHouse: under 2 s at
busy times, up to ``max_age`` for a trickle (detection, blocks and alerts read the stream
itself and never wait for them).

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
DEFAULT_MIN_DECISIONS = 1_000
DEFAULT_MIN_AGE = 1.0
DEFAULT_MAX_AGE = 5.0
MAX_DECISIONS_LIMIT = 1_000_000  # an insert of more holds too much in memory for no gain
MAX_AGE_LIMIT = 60.0


@dataclass(frozen=True)
class BatchBounds:
    """A batch is written once it holds ``max_decisions`` decisions (a larger one is cut
    there), once it holds ``min_decisions`` and its first decision was read ``min_age``
    seconds ago, or ``max_age`` seconds after its first decision was read (0: at every
    read), whichever comes first.  A ``min_age`` at or above ``max_age`` leaves
    ``max_age`` alone to decide."""

    max_decisions: int = DEFAULT_MAX_DECISIONS
    max_age: float = DEFAULT_MAX_AGE
    min_decisions: int = DEFAULT_MIN_DECISIONS
    min_age: float = DEFAULT_MIN_AGE

    def __post_init__(self) -> None:
        for name in ("max_decisions", "min_decisions"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 1 <= value <= MAX_DECISIONS_LIMIT
            ):
                raise ValueError(
                    f"the batch {name.replace('_', ' ')} must be 1 to {MAX_DECISIONS_LIMIT} "
                    f"decisions, not {value!r}"
                )
        for name in ("max_age", "min_age"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not 0 <= value <= MAX_AGE_LIMIT
            ):
                raise ValueError(
                    f"the batch {name.replace('_', ' ')} must be 0 to {MAX_AGE_LIMIT:g} "
                    f"seconds, not {value!r}"
                )

    def due_at(self, first_read_at: float, decisions: int) -> float:
        """When a batch whose first item was read at ``first_read_at`` and that holds
        ``decisions`` is due by age."""
        if decisions >= self.min_decisions and self.min_age < self.max_age:
            return first_read_at + self.min_age
        return first_read_at + self.max_age


class Pending(Generic[T]):
    """What a consumer has read and not written yet, oldest first: each item with its
    number of decisions (a Valkey stream entry holds those of one check-script call, a Kafka
    record one) and the time it was read (``time.monotonic()``).

    The batch after one of ``min_decisions`` or more is due at ``min_age`` too, however
    small: when a busy stream falls quiet, its last decisions are not held for ``max_age``;
    once a small batch has been written, small ones wait for ``max_age`` again."""

    def __init__(self, bounds: BatchBounds) -> None:
        self.bounds = bounds
        self._items: list[T] = []
        self._sizes: list[int] = []
        self._read_at: list[float] = []
        self.decisions = 0
        self._after_busy = False  # the last batch taken held min_decisions or more

    @property
    def _weight(self) -> int:
        """The decisions the age bounds go by: a batch after a busy one counts as busy."""
        if self._after_busy:
            return max(self.decisions, self.bounds.min_decisions)
        return self.decisions

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
        """When what is held is due by age, as it stands (more decisions may bring it
        forward); None when nothing is pending."""
        if not self._items:
            return None
        return self.bounds.due_at(self._read_at[0], self._weight)

    def next_look(self, now: float) -> float | None:
        """When a consumer waiting for more should look again: the deadline, or sooner
        while the batch is small: every ``min_age`` from ``min_age`` after its first item
        on, since what arrived meanwhile may make it due early; None when nothing is
        pending."""
        if not self._items:
            return None
        bounds = self.bounds
        first = self._read_at[0]
        weight = self._weight
        deadline = bounds.due_at(first, weight)
        if weight >= bounds.min_decisions:
            return deadline
        return min(deadline, max(first, now) + bounds.min_age)

    def due(self, now: float) -> bool:
        """Whether a batch is to be written now: it is full, or old enough for its size."""
        if not self._items:
            return False
        return self.decisions >= self.bounds.max_decisions or now >= self.bounds.due_at(
            self._read_at[0], self._weight
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
        taken = sum(self._sizes[:end])
        self.decisions -= taken
        self._after_busy = taken >= self.bounds.min_decisions
        del self._items[:end], self._sizes[:end], self._read_at[:end]
        return batch
