"""The deadline of a check-script call, in the server's clock.

A call the client gave up on (its socket timeout passed) is answered by the failure policy;
if Redis ran that call later, its decisions would be counted beside the policy's answers.
So each streaming call carries the latest time it may start at, and the check script
refuses, changing nothing, a call that reaches it later than that.

The deadline is ``now + timeout - margin`` in the limiter's wall clock, compared with
Redis's ``TIME``: both clocks must agree within the margin (same host, as in
``ratewatch up``, or NTP-synced hosts). The margin leaves a call that starts just before its
deadline the time to run and reply before the client gives up: ``max(100 ms, 40 % of the
timeout)``, at most half the timeout. The largest call (2,048 checks, each with three block
subjects, streamed) runs in Redis for 23-29 ms at the median on a loaded two-core machine,
with rare runs of 56-136 ms (``bench/call_runtime.py``), so 50 ms would not do. A call
that waits longer than the rest of the timeout before it starts is refused: cheap work for
a Redis that is already behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis

MIN_MARGIN_MS = 100
MARGIN_SHARE = 0.4
# the script's reply to a call past its deadline: an error reply with this code
PAST_DEADLINE = "PASTDEADLINE"


def wall_clock_ms() -> int:
    """This host's wall clock in epoch ms (the clock Redis's ``TIME`` reads on it)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class CallDeadline:
    """Deadlines for calls made with a client socket timeout of ``timeout`` seconds."""

    timeout: float
    clock: Callable[[], int] = field(default=wall_clock_ms, compare=False)

    @property
    def margin_ms(self) -> int:
        timeout_ms = self.timeout * 1000
        return int(min(max(MIN_MARGIN_MS, MARGIN_SHARE * timeout_ms), timeout_ms / 2))

    @property
    def budget_ms(self) -> int:
        """How long after it is sent a call may still start."""
        return int(self.timeout * 1000) - self.margin_ms

    def of_call_sent_now(self) -> int:
        """The deadline, in epoch ms, of a call sent now."""
        return self.clock() + self.budget_ms

    async def clock_offset_ms(self, redis: Redis) -> tuple[float, float]:
        """How far Redis's clock is ahead of ``clock`` (negative: behind), and the
        measure's uncertainty (half the round trip), both in ms."""
        sent = self.clock()
        seconds, micros = await redis.time()
        received = self.clock()
        return seconds * 1000 + micros / 1000 - (sent + received) / 2, (received - sent) / 2
