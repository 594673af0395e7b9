"""When a failed webhook delivery is attempted again: the retry schedule, with jitter.

``schedule[n]`` is the delay before attempt ``n + 1``, counted from the attempt before
(``schedule[0]``, the first attempt's, is not a retry: a delivery is due when queued).
Each retry's delay is moved by a random share of itself, up to ``jitter`` either way
(±10 % by default): when many endpoints fail at once (a receiver's outage, a network cut)
their retries spread out instead of all coming back in the same second, again and again.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

DEFAULT_JITTER = 0.1


class RetryPolicy:
    """``rng`` draws the jitter (a seeded ``random.Random`` in tests)."""

    def __init__(
        self,
        schedule: Sequence[float],
        jitter: float = DEFAULT_JITTER,
        rng: random.Random | None = None,
    ):
        if not schedule or any(delay < 0 for delay in schedule):
            raise ValueError(
                f"webhook retry schedule {tuple(schedule)!r} must be delays >= 0, at least one"
            )
        if not 0 <= jitter < 1:
            raise ValueError(f"webhook retry jitter {jitter!r} is not within 0-1 (a share)")
        self.schedule = tuple(schedule)
        self.jitter = jitter
        self._rng = rng or random.Random()

    @property
    def attempts(self) -> int:
        """How many attempts a delivery gets, at most."""
        return len(self.schedule)

    def delay_after(self, attempt: int) -> float | None:
        """Seconds from failed attempt number ``attempt`` (1 for the first) to the next,
        jittered; None if it was the last."""
        if not 1 <= attempt < len(self.schedule):
            return None
        delay = self.schedule[attempt]
        return delay * (1 + self._rng.uniform(-self.jitter, self.jitter))
