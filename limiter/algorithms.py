"""Rate-limit algorithms: names, outcomes and the reference implementation.

The Lua scripts in ``lua/`` and the functions here implement the same arithmetic on the
same integer state, so the in-memory backend decides exactly like Redis (this is
property-tested).  All arithmetic is integer: a window is ``window_ms`` milliseconds and
the sliding window and token bucket scale counts by it, so ``limit * window_ms`` must stay
below 2**51 to be exact in Lua's doubles (see ``MAX_LIMIT_WINDOW``).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

# limit × window (in limit·seconds) above which the scaled integer arithmetic would no
# longer be exact in Lua's double-precision numbers.
MAX_LIMIT_WINDOW = 2_000_000_000_000
MAX_WINDOW_SECONDS = 366 * 24 * 3600
NO_RETRY = -1


class Algorithm(enum.StrEnum):
    SLIDING_WINDOW = "sliding_window"
    TOKEN_BUCKET = "token_bucket"
    FIXED_WINDOW = "fixed_window"

    @property
    def code(self) -> str:
        """The one-letter code the Lua dispatcher understands."""
        return _CODES[self]


_CODES = {
    Algorithm.SLIDING_WINDOW: "s",
    Algorithm.TOKEN_BUCKET: "t",
    Algorithm.FIXED_WINDOW: "f",
}


class Reason(enum.IntEnum):
    """Why a decision came out the way it did; the Lua scripts return these codes."""

    OK = 0
    LIMIT = 1
    BLOCKED = 2
    COST_EXCEEDS_LIMIT = 3
    FAIL_OPEN = 4
    FAIL_CLOSED = 5

    @property
    def label(self) -> str:
        return REASON_LABELS[self]


# each reason's label by its code: looked up for every decision the API answers
REASON_LABELS = tuple(reason.name.lower() for reason in Reason)


class Outcome(NamedTuple):
    """One decision in milliseconds; ``retry_ms`` is ``NO_RETRY`` when retrying cannot help.
    For a check of several windows (a policy's), ``window_of`` says which window it
    describes."""

    allowed: bool
    remaining: int
    reset_ms: int
    retry_ms: int
    reason: Reason


class _WindowOutcome(Outcome):
    """An outcome of a check of several windows that describes another window than the
    first: a tuple equal to the plain ``Outcome`` (every comparison and unpacking of an
    outcome stays as it is). Its class says which window: one subclass per index
    (``_window_class``), so that an outcome is a bare tuple, with no attribute of its own to
    allocate and set."""

    __slots__ = ()
    deciding: int

    def _replace(self, **changes: object) -> Outcome:  # type: ignore[override]
        return with_window(Outcome._replace(self, **changes), self.deciding)  # type: ignore[arg-type]


# the subclass of each window index met so far (a policy has a handful of windows)
_WINDOW_CLASSES: dict[int, type[_WindowOutcome]] = {}


def _window_class(window: int) -> type[_WindowOutcome]:
    """The subclass of index ``window``, made the first time it is asked for."""
    name = f"_WindowOutcome{window}"
    cls = _WINDOW_CLASSES[window] = type(
        name, (_WindowOutcome,), {"__slots__": (), "deciding": window}
    )
    globals()[name] = cls  # found by its name, as pickle and copy look it up
    return cls


def with_window(outcome: Outcome, window: int) -> Outcome:
    """``outcome`` as the outcome of the window of index ``window`` of its check."""
    if not window:
        return outcome
    # the tuple copied as is: a NamedTuple's __new__ takes its fields one by one
    return tuple.__new__(_WINDOW_CLASSES.get(window) or _window_class(window), outcome)


def window_of(outcome: Outcome) -> int:
    """The index in ``Check.windows`` of the window ``outcome`` describes (0: the first,
    and the only one of a plain check)."""
    return outcome.deciding if isinstance(outcome, _WindowOutcome) else 0


def ceil_seconds(ms: int) -> int:
    """Milliseconds as the whole seconds the API speaks (rounded up: never too early)."""
    return -(-ms // 1000)


def retry_after_seconds(outcome: Outcome) -> int | None:
    """``retry_after`` of the API: None when allowed or when waiting cannot help."""
    if outcome.allowed or outcome.retry_ms == NO_RETRY:
        return None
    return max(1, ceil_seconds(outcome.retry_ms))


class CounterState(NamedTuple):
    """The integer fields one counter keeps; ``a``/``b``/``c`` mean per algorithm:

    - sliding window: window index, current count, previous count
    - token bucket: level (tokens × window_ms), last refill time (ms), unused
    - fixed window: window index, count, unused
    """

    a: int
    b: int
    c: int


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def sliding_window(
    state: CounterState | None, now: int, limit: int, window: int, cost: int
) -> tuple[Outcome, CounterState | None]:
    """Weighted two-window counter: the previous window's count weighs by how much of it
    still overlaps the sliding window.  Returns the outcome and the state to store (None
    when nothing changes)."""
    cur = now // window
    elapsed = now - cur * window
    count, previous = 0, 0
    if state is not None:
        if state.a == cur:
            count, previous = state.b, state.c
        elif state.a == cur - 1:
            previous = state.b
    used = count * window + previous * (window - elapsed)
    capacity = limit * window
    reset = window - elapsed
    if cost > limit:
        return Outcome(
            False, max(0, (capacity - used) // window), reset, NO_RETRY, Reason.COST_EXCEEDS_LIMIT
        ), None
    if used + cost * window <= capacity:
        if cost == 0:
            return Outcome(
                True, max(0, (capacity - used) // window), reset, NO_RETRY, Reason.OK
            ), None
        count += cost
        used += cost * window
        return (
            Outcome(True, (capacity - used) // window, reset, NO_RETRY, Reason.OK),
            CounterState(cur, count, previous),
        )
    if count + cost <= limit:
        # the previous window's weight has to decay far enough, still inside this window
        retry = reset - ((limit - count - cost) * window) // previous
    else:
        # this window's own count has to become the (decaying) previous window first
        retry = reset + max(0, window - ((limit - cost) * window) // count)
    return Outcome(False, max(0, (capacity - used) // window), reset, retry, Reason.LIMIT), None


def token_bucket(
    state: CounterState | None, now: int, limit: int, window: int, cost: int
) -> tuple[Outcome, CounterState | None]:
    """A bucket of ``limit`` tokens refilled at ``limit`` per window; the level is kept in
    tokens × window_ms so that refill is integer."""
    capacity = limit * window
    if state is None:
        level, last = capacity, now
    else:
        level, last = state.a, state.b
        if now > last:
            level += (now - last) * limit
            last = now
        level = min(capacity, level)  # also when the limit was lowered since
    if cost > limit:
        return Outcome(
            False,
            level // window,
            _ceil_div(capacity - level, limit),
            NO_RETRY,
            Reason.COST_EXCEEDS_LIMIT,
        ), None
    need = cost * window
    if level >= need:
        if cost == 0:
            return Outcome(
                True, level // window, _ceil_div(capacity - level, limit), NO_RETRY, Reason.OK
            ), None
        level -= need
        return (
            Outcome(True, level // window, _ceil_div(capacity - level, limit), NO_RETRY, Reason.OK),
            CounterState(level, last, 0),
        )
    return Outcome(
        False,
        level // window,
        _ceil_div(capacity - level, limit),
        _ceil_div(need - level, limit),
        Reason.LIMIT,
    ), None


def fixed_window(
    state: CounterState | None, now: int, limit: int, window: int, cost: int
) -> tuple[Outcome, CounterState | None]:
    """A counter per window aligned to the epoch; it resets to zero at each boundary."""
    cur = now // window
    reset = window - (now - cur * window)
    count = state.b if state is not None and state.a == cur else 0
    if cost > limit:
        return Outcome(
            False, max(0, limit - count), reset, NO_RETRY, Reason.COST_EXCEEDS_LIMIT
        ), None
    if count + cost <= limit:
        if cost == 0:
            return Outcome(True, max(0, limit - count), reset, NO_RETRY, Reason.OK), None
        count += cost
        return Outcome(True, limit - count, reset, NO_RETRY, Reason.OK), CounterState(cur, count, 0)
    return Outcome(False, max(0, limit - count), reset, reset, Reason.LIMIT), None


def deciding_window(outcomes: list[Outcome]) -> int:
    """Which of a multi-window check's outcomes describes it (the check script picks the
    same): a denial's window with the longest wait (``NO_RETRY``, waiting cannot help, is
    the longest), else the window with the least remaining; the first one on a tie."""
    best = 0
    denied = not outcomes[0].allowed
    for index in range(1, len(outcomes)):
        outcome = outcomes[index]
        current = outcomes[best]
        if not outcome.allowed:
            if not denied:
                best, denied = index, True
            elif current.retry_ms != NO_RETRY and (
                outcome.retry_ms == NO_RETRY or outcome.retry_ms > current.retry_ms
            ):
                best = index
        elif not denied and outcome.remaining < current.remaining:
            best = index
    return best


def state_ttl_ms(algorithm: Algorithm, outcome: Outcome, window: int) -> int:
    """How long a stored state is kept: past that it decides nothing (the Lua scripts set
    the same PEXPIRE).  One extra millisecond, because Redis may drop a key with a 1 ms TTL
    at once when its clock ticks during the command.  A token bucket refills completely
    within one window whatever its limit, so its state lives one window: a raised limit
    then never meets a state that expired before the bucket was full at the new limit."""
    if algorithm is Algorithm.SLIDING_WINDOW:
        return window + outcome.reset_ms + 1
    if algorithm is Algorithm.TOKEN_BUCKET:
        return window + 1
    return outcome.reset_ms + 1


STEP = {
    Algorithm.SLIDING_WINDOW: sliding_window,
    Algorithm.TOKEN_BUCKET: token_bucket,
    Algorithm.FIXED_WINDOW: fixed_window,
}
