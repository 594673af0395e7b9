"""What a decision store is asked: a batch of checks, decided atomically in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from limiter.algorithms import Algorithm, Outcome

# a check's numbers, key names and encoding around its strings, in a store call
CHECK_OVERHEAD_BYTES = 128


class Check(NamedTuple):
    """One validated check of one tenant; ``window_ms`` is the window in milliseconds."""

    tenant: str
    key: str
    algorithm: Algorithm
    limit: int
    window_ms: int
    cost: int
    ip: str | None = None
    user_id: str | None = None
    # carried into decision events only
    route: str | None = None
    user_agent: str | None = None
    segment: str | None = None
    started_ns: int = 0  # time.perf_counter_ns() when the request arrived
    # a policy's check: every window as (limit, window_ms), the first one being
    # (limit, window_ms) above; decided atomically, denied if any denies
    # (``limiter.algorithms.window_of`` says which decided).  Empty for a check of one window.
    windows: tuple[tuple[int, int], ...] = ()
    policy: str | None = None  # carried into decision events
    shadow: bool = False  # the policy's mode is shadow: a denial is answered allowed

    def block_subjects(self) -> list[tuple[str, str]]:
        """The (scope, value) pairs a block may name to stop this check."""
        subjects = [("key", self.key)]
        if self.ip is not None:
            subjects.append(("ip", self.ip))
        if self.user_id is not None:
            subjects.append(("user_id", self.user_id))
        return subjects


def payload_bytes(checks: Sequence[Check]) -> int:
    """About what ``checks`` add to a store call: their strings and a fixed share each."""
    total = len(checks) * CHECK_OVERHEAD_BYTES
    for _, key, _, _, _, _, ip, user_id, route, user_agent, _, _, windows, _, _ in checks:
        if windows:
            total += 16 * len(windows)
        total += len(key)
        if ip:
            total += len(ip)
        if user_id:
            total += len(user_id)
        if route:
            total += len(route)
        if user_agent:
            total += len(user_agent)
    return total


class DecisionStore(Protocol):
    async def decide(self, checks: Sequence[Check], now_ms: int = 0) -> list[Outcome]:
        """Decide ``checks`` in order; ``now_ms`` 0 means the store's own clock."""
        ...
