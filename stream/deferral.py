"""The checks first: the embedded pipeline holds its analytics writes while the limiter is busy.

Under ``ratewatch up`` the limiter and the pipeline worker share the machine's cores.  The
worker runs at a lower CPU priority, but a lower priority only orders the cores' time: the
worker still runs whenever a core is free for a moment, and on a small box, while a burst
of checks keeps the limiter, its clients and Valkey busy, each of the worker's turns is
one the limiter waits behind (``docs/performance.md``: ``up`` answered 0.8–0.9 of what it
answered with the worker stopped).  Storing decisions in ClickHouse is the worker's
largest cost under a burst, and the one that can wait: the decisions wait in the stream,
unacknowledged, and nothing trims them before they are stored.

So the consumer asks, before each read and each insert, whether the checks are busy
(``busy``: in ``up``, the limiter's share of a core over the last quarter of a second,
``ratewatch.processes.limiter_load``).  While they are, it waits, and reads and writes
nothing; it goes on once they have not been busy for ``quiet_seconds`` (a second: the
pauses within a burst, between a client's rounds of requests, do not let an insert start
that the next round would wait behind).  The wait is bounded: ``max_seconds`` after the
first hold since the consumer was last caught up (its last read found less than a full
read and no batch in hand is due), it goes on whether the checks are busy or not, and
waits again only once it has caught up: holds between which it did not catch up count as
one, so bursts with short pauses cannot put it ever further behind.
An answered decision is in ClickHouse at most about ``max_seconds`` later than it would
have been, plus the time to catch up.

Detection and the outbox drains are not held: they read the stream themselves, and a block
or an alert must not wait for a burst to end (a burst may be the attack).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

POLL_SECONDS = 0.1  # how often a held consumer asks again whether the checks are busy
QUIET_SECONDS = 1.0
DEFAULT_MAX_SECONDS = 30.0


class Deferral:
    """Holds a consumer while ``busy()`` says the checks need the cores, until they have
    not for ``quiet_seconds``; ``max_seconds`` after the first hold since it last caught
    up, lets it run until it has caught up again.  ``on_held`` is told each held
    stretch's seconds (for the consumer's metrics)."""

    def __init__(
        self,
        busy: Callable[[], bool],
        max_seconds: float = DEFAULT_MAX_SECONDS,
        *,
        poll_seconds: float = POLL_SECONDS,
        quiet_seconds: float = QUIET_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        on_held: Callable[[float], None] | None = None,
    ) -> None:
        if not max_seconds > 0:
            raise ValueError(
                f"a deferral's longest hold must be above 0 seconds, not {max_seconds!r}"
            )
        self._busy = busy
        self._max = max_seconds
        self._poll = poll_seconds
        self._quiet = quiet_seconds
        self._clock = clock
        self._on_held = on_held
        self._behind_since: float | None = None  # the first hold since last caught up
        self.holding = False

    async def turn(self, stopping: asyncio.Event, caught_up: bool) -> None:
        """Return once the consumer may read or write: at once unless the checks are busy;
        ``caught_up`` says whether nothing read waits to be written and nothing more
        waits to be read."""
        if caught_up:
            self._behind_since = None
        if self._overdue() or not self._busy():
            return  # overdue: not held again before catching up
        started = self._clock()
        if self._behind_since is None:
            self._behind_since = started
        quiet_since: float | None = None
        self.holding = True
        try:
            while not stopping.is_set():
                if self._overdue():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self._poll)
                if self._busy():
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = self._clock()
                elif self._clock() - quiet_since >= self._quiet:
                    return
        finally:
            self.holding = False
            if self._on_held is not None:
                self._on_held(self._clock() - started)

    def _overdue(self) -> bool:
        """Whether ``max_seconds`` have passed since the first hold since last caught up."""
        since = self._behind_since
        return since is not None and self._clock() - since >= self._max
