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
    # set by the traced check handler only (limiter/tracing): the request's trace id
    # (32 hex digits, carried into the decision event) and its span's context (an
    # OpenTelemetry SpanContext, which the store call's span links to)
    trace_id: str | None = None
    span: object = None

    def block_subjects(self) -> list[tuple[str, str]]:
        """The (scope, value) pairs a block may name to stop this check."""
        subjects = [("key", self.key)]
        if self.ip is not None:
            subjects.append(("ip", self.ip))
        if self.user_id is not None:
            subjects.append(("user_id", self.user_id))
        return subjects


# payload_bytes reads the fields it weighs by index (a NamedTuple's field by name is an
# attribute lookup); kept true to the fields' order here
if tuple(Check._fields[i] for i in (1, 6, 7, 8, 9, 12)) != (
    "key", "ip", "user_id", "route", "user_agent", "windows",
):  # fmt: skip
    raise RuntimeError(f"payload_bytes reads Check's fields by index: {Check._fields}")


def payload_bytes(checks: Sequence[Check]) -> int:
    """About what ``checks`` add to a store call: their strings and a fixed share each."""
    total = len(checks) * CHECK_OVERHEAD_BYTES
    for check in checks:  # most optional fields are None
        total += len(check[1])
        if check[6]:
            total += len(check[6])
        if check[7]:
            total += len(check[7])
        if check[8]:
            total += len(check[8])
        if check[9]:
            total += len(check[9])
        if check[12]:
            total += 16 * len(check[12])
    return total


class DecisionStore(Protocol):
    async def decide(self, checks: Sequence[Check], now_ms: int = 0) -> list[Outcome]:
        """Decide ``checks`` in order; ``now_ms`` 0 means the store's own clock."""
        ...
